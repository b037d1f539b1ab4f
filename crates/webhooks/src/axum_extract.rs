//! The axum extractor: a typed [`Webhook`] from a request the layer verified.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::event::Webhook;
use crate::verifier::VerifiedWebhook;

/// Why the [`Webhook`] extractor refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookRejection {
    /// No [`WebhookLayer`](crate::WebhookLayer) verified this request: a routing mistake,
    /// answered 500 so it is noticed (and TrueLayer retries once it is fixed).
    #[error("the webhook was not verified: put WebhookLayer in front of this handler")]
    NotVerified,
    /// The body could not be read.
    #[error("the webhook body could not be read")]
    Body(#[source] axum::Error),
    /// The body is not a webhook envelope (`type`, `event_id`, and for payment events a
    /// `payment_id`).
    #[error("the webhook body is not a TrueLayer webhook")]
    NotAWebhook(#[source] serde_json::Error),
}

impl IntoResponse for WebhookRejection {
    fn into_response(self) -> Response {
        let status = match &self {
            WebhookRejection::NotVerified => {
                tracing::error!("{self}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            WebhookRejection::Body(_) | WebhookRejection::NotAWebhook(_) => {
                tracing::warn!(error = %crate::chain(&self), "webhook refused");
                StatusCode::BAD_REQUEST
            }
        };
        (status, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequest<S> for Webhook {
    type Rejection = WebhookRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if request.extensions().get::<VerifiedWebhook>().is_none() {
            return Err(WebhookRejection::NotVerified);
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| WebhookRejection::Body(axum::Error::new(e)))?;
        serde_json::from_slice(&bytes).map_err(WebhookRejection::NotAWebhook)
    }
}
