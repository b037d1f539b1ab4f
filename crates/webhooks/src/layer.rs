//! [`VerifyWebhooksLayer`]: verify before the handler runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower::{Layer, Service};
use truelayer_auth_http::error_chain;

use crate::error::WebhookError;
use crate::event::Webhook;
use crate::jwks::truncate;
use crate::ledger::{Begin, EventLedger};
use crate::verifier::WebhookVerifier;

/// The largest webhook body read by default (TrueLayer's are a few KiB).
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// A tower layer that verifies TrueLayer webhooks before the handler runs.
///
/// The body is read (up to [`max_body_bytes`](Self::max_body_bytes), 413 above it) and
/// checked by the [`WebhookVerifier`]; a webhook that fails gets a short `text/plain` answer
/// (401, or 503 when the keys could not be fetched) and a `warn` log line naming why, and
/// the handler never sees it. A verified one reaches the handler with the exact bytes as an
/// `http_body_util::Full<Bytes>` body (axum's `Router::layer` accepts that) and a
/// [`VerifiedWebhook`](crate::VerifiedWebhook) in its extensions.
///
/// With an [`EventLedger`], an `event_id` already handled is answered 200 without reaching
/// the handler (TrueLayer retries, replays), one being handled 409. The layer then reads the
/// body as a [`Webhook`] once, for the ledger and for the handler's extractor alike, and
/// answers 400 ([`WebhookError::InvalidEnvelope`]) to a body with no `event_id`, or with a
/// top-level key twice.
///
/// # Example
///
/// ```
/// use axum::{Router, routing::post};
/// use truelayer_auth_webhooks::{InMemoryLedger, VerifyWebhooksLayer, Webhook, WebhookVerifier};
///
/// async fn handle(webhook: Webhook) -> &'static str {
///     println!("{} {}", webhook.event_type(), webhook.event_id);
///     "ok"
/// }
///
/// let verifier = WebhookVerifier::builder().build()?;
/// let app: Router = Router::new()
///     .route("/tl-webhook", post(handle))
///     .layer(VerifyWebhooksLayer::new(verifier).ledger(InMemoryLedger::new(100_000)));
/// # let _ = app;
/// # Ok::<(), truelayer_auth_webhooks::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct VerifyWebhooksLayer {
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
struct Config {
    verifier: WebhookVerifier,
    ledger: Option<Arc<dyn EventLedger>>,
    max_body: usize,
    body_timeout: Duration,
}

impl VerifyWebhooksLayer {
    /// A layer checking webhooks with `verifier`.
    pub fn new(verifier: WebhookVerifier) -> Self {
        VerifyWebhooksLayer {
            config: Arc::new(Config {
                verifier,
                ledger: None,
                max_body: DEFAULT_MAX_BODY,
                body_timeout: Duration::from_secs(10),
            }),
        }
    }

    /// Hands each `event_id` to the handler until one delivery is answered 2xx, and never
    /// after.
    #[must_use]
    pub fn ledger(mut self, ledger: impl EventLedger) -> Self {
        self.config_mut().ledger = Some(Arc::new(ledger));
        self
    }

    /// The largest body read ([`DEFAULT_MAX_BODY`] by default); larger ones get 413.
    #[must_use]
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.config_mut().max_body = limit;
        self
    }

    /// How long reading the body may take (10 s by default); slower senders get 408.
    #[must_use]
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().body_timeout = timeout;
        self
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }
}

impl<S> Layer<S> for VerifyWebhooksLayer {
    type Service = VerifyWebhooks<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyWebhooks {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`VerifyWebhooksLayer`] makes: verifies each webhook, then calls `inner`.
#[derive(Clone)]
pub struct VerifyWebhooks<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> VerifyWebhooks<S> {
    /// Wraps `inner`, checking webhooks with `verifier` (no ledger, the default limits; use
    /// [`VerifyWebhooksLayer`] to change them).
    pub fn new(inner: S, verifier: WebhookVerifier) -> Self {
        VerifyWebhooksLayer::new(verifier).layer(inner)
    }

    /// A [`VerifyWebhooksLayer`] checking webhooks with `verifier`.
    pub fn layer(verifier: WebhookVerifier) -> VerifyWebhooksLayer {
        VerifyWebhooksLayer::new(verifier)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for VerifyWebhooks<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyWebhooks")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

/// The future [`VerifyWebhooks`] returns.
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for VerifyWebhooks<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is not ready; the service that was polled ready goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // Signature present, jku allowed, timestamp signed and recent: before the body
            // is read, so a forged webhook costs no memory, no fetch and no ECDSA.
            let checked = match config.verifier.check_headers(&parts.headers) {
                Ok(checked) => checked,
                Err(error) => return Ok(refuse(&error)),
            };
            let read = read_body(body, config.max_body, &parts.headers);
            let bytes = match tokio::time::timeout(config.body_timeout, read).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(error)) => return Ok(refuse(&error)),
                Err(_) => return Ok(refuse(&WebhookError::BodyTimeout)),
            };
            let path = original_path(&parts);
            let verified = match config
                .verifier
                .check_signature(checked, &parts.method, &path, &parts.headers, &bytes)
                .await
            {
                Ok(verified) => verified,
                Err(error) => return Ok(refuse(&error)),
            };
            let mut claim = None;
            if let Some(ledger) = &config.ledger {
                // One parse decides the event for the ledger and the handler (the extractor
                // takes this one); a body whose `event_id` is absent or given twice is refused,
                // or every replay of it would reach the handler.
                let webhook = match Webhook::parse(&bytes) {
                    Ok(webhook) => webhook,
                    Err(error) => return Ok(refuse(&WebhookError::InvalidEnvelope(error))),
                };
                let id = webhook.event_id.clone();
                #[cfg(feature = "axum")]
                parts
                    .extensions
                    .insert(crate::axum_extract::Parsed(webhook));
                match ledger.begin(&id).await {
                    Ok(Begin::New(number)) => {
                        claim = Some(Claim {
                            ledger: ledger.clone(),
                            event_id: id,
                            number,
                            settled: false,
                            succeeded: false,
                        });
                    }
                    Ok(Begin::Done) => {
                        tracing::debug!(event_id = %truncate(&id, 100), "webhook event already handled");
                        return Ok(answer(StatusCode::OK, "already handled"));
                    }
                    Ok(_) => {
                        tracing::debug!(event_id = %truncate(&id, 100), "webhook event being handled");
                        return Ok(answer(StatusCode::CONFLICT, "being handled"));
                    }
                    // Not recorded; TrueLayer will retry. The handler must not run without
                    // a claim.
                    Err(error) => {
                        tracing::warn!(event_id = %truncate(&id, 100), error = %error_chain(&error), "webhook ledger failed");
                        return Ok(answer(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "event ledger unavailable",
                        ));
                    }
                }
            }
            parts.extensions.insert(verified);
            let response = inner
                .call(Request::from_parts(parts, Full::new(bytes)))
                .await?;
            if let Some(mut claim) = claim
                && response.status().is_success()
            {
                // From here the claim is completed, never released: if this future is
                // dropped while `complete` waits (the client hung up), the drop completes it.
                claim.succeeded = true;
                match claim.ledger.complete(&claim.event_id, claim.number).await {
                    Ok(()) => claim.settled = true,
                    // Dropped below and released, so a retry reaches the handler again (at
                    // least once, rather than lost).
                    Err(error) => {
                        claim.succeeded = false;
                        tracing::warn!(
                            event_id = %truncate(&claim.event_id, 100),
                            error = %error_chain(&error),
                            "webhook handled but not recorded; a retry will reach the handler again"
                        );
                    }
                }
            }
            // A claim not settled is dropped here: released, so TrueLayer's retry is handled.
            Ok(response)
        })
    }
}

/// A claimed `event_id`: released on drop unless the handler succeeded; completed on drop
/// (in a task on the current runtime) when the handler succeeded but the `complete` awaited
/// for it was cancelled.
struct Claim {
    ledger: Arc<dyn EventLedger>,
    event_id: String,
    number: u64,
    /// `complete` or `release` done.
    settled: bool,
    /// The handler answered 2xx: the claim may only be completed.
    succeeded: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if !self.succeeded {
            self.ledger.release(&self.event_id, self.number);
            return;
        }
        // The handler succeeded and the request's future was dropped while `complete` ran:
        // finish it in the background. Releasing would let TrueLayer's retry run the
        // handler again. Outside a runtime the claim is left to its lease.
        let (ledger, event_id, number) = (
            Arc::clone(&self.ledger),
            std::mem::take(&mut self.event_id),
            self.number,
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                event_id = %truncate(&event_id, 100),
                "webhook handled but not recorded (no runtime); a retry after the lease will reach the handler again"
            );
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = ledger.complete(&event_id, number).await {
                tracing::warn!(
                    event_id = %truncate(&event_id, 100),
                    error = %error_chain(&error),
                    "webhook handled but not recorded; a retry will reach the handler again"
                );
            }
        });
    }
}

async fn read_body<B>(
    body: B,
    limit: usize,
    headers: &http::HeaderMap,
) -> Result<Bytes, WebhookError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(WebhookError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(WebhookError::BodyTooLarge { limit }),
        Err(error) => Err(WebhookError::Body(error)),
    }
}

/// The path TrueLayer addressed: under axum's `Router::nest` the URI is stripped of the
/// prefix, and the original is in the extensions.
fn original_path(parts: &http::request::Parts) -> String {
    #[cfg(feature = "axum")]
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        return original.0.path().to_owned();
    }
    parts.uri.path().to_owned()
}

fn refuse<ResBody: From<Bytes>>(error: &WebhookError) -> Response<ResBody> {
    tracing::warn!(
        reason = error.reason(),
        error = %error_chain(error),
        "webhook refused"
    );
    answer(error.status(), error.reason())
}

fn answer<ResBody: From<Bytes>>(status: StatusCode, text: &'static str) -> Response<ResBody> {
    let mut response = Response::new(ResBody::from(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
