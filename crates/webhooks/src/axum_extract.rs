//! The axum extractor: a typed [`Webhook`] from a request the layer verified.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::event::Webhook;
use crate::verifier::VerifiedWebhook;

/// The webhook the layer parsed for its ledger, handed to the extractor so the handler sees
/// the event the ledger keyed (private: nothing else can put one in a request's extensions).
#[derive(Clone)]
pub(crate) struct Parsed(pub(crate) Webhook);

/// Why the [`Webhook`] extractor refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookRejection {
    /// No [`VerifyWebhooksLayer`](crate::VerifyWebhooksLayer) verified this request: a
    /// routing mistake, answered 500 so it is noticed (and TrueLayer retries once it is fixed).
    #[error("the webhook was not verified: put VerifyWebhooksLayer in front of this handler")]
    NotVerified,
    /// The body could not be read (behind the layer it is already in memory, so this
    /// means no layer read it).
    #[error("the webhook body could not be read")]
    Body,
    /// The body is not a webhook envelope (`type` and `event_id`). Only where parsing
    /// stopped is kept: serde's messages quote the values they met, and a body is never
    /// logged.
    #[error(
        "the webhook body is not a TrueLayer webhook ({category} error at line {line}, column {column})"
    )]
    NotAWebhook {
        /// syntax, data, eof or io.
        category: &'static str,
        /// Where parsing stopped.
        line: usize,
        /// Where parsing stopped.
        column: usize,
    },
}

impl IntoResponse for WebhookRejection {
    fn into_response(self) -> Response {
        let status = match &self {
            WebhookRejection::NotVerified => {
                tracing::error!("{self}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            WebhookRejection::Body | WebhookRejection::NotAWebhook { .. } => {
                tracing::warn!(error = %self, "webhook refused");
                StatusCode::BAD_REQUEST
            }
        };
        (status, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequest<S> for Webhook {
    type Rejection = WebhookRejection;

    async fn from_request(mut request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if request.extensions().get::<VerifiedWebhook>().is_none() {
            return Err(WebhookRejection::NotVerified);
        }
        // Parsed by the layer for its ledger: the handler gets the event the ledger keyed.
        if let Some(Parsed(webhook)) = request.extensions_mut().remove::<Parsed>() {
            return Ok(webhook);
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|_| WebhookRejection::Body)?;
        serde_json::from_slice(&bytes).map_err(|e| WebhookRejection::NotAWebhook {
            category: match e.classify() {
                serde_json::error::Category::Io => "io",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "data",
                serde_json::error::Category::Eof => "eof",
            },
            line: e.line(),
            column: e.column(),
        })
    }
}
