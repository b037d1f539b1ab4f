//! Webhooks as TrueLayer sends them: where they go, the key they are signed with (a
//! `Tl-Signature` with a `jku`) and its JWKS, a queue per payment (or other subject) so they
//! go out in order, and delivery with retries. What a webhook says is its product's
//! business (`payments::events`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes as RequestBody;
use axum::extract::State as AxumState;
use axum::http::{Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};
use truelayer_auth_http::{TL_SIGNATURE, X_TL_WEBHOOK_TIMESTAMP};

use crate::clock::rfc3339;
use crate::error::{Error, chain, redact_url};
use crate::signature::KeyPair;
use crate::state::{State, lock};
use crate::stats::Counter;

/// The key id of the emulator's webhook signing key, in each webhook's `Tl-Signature` and in
/// the JWKS its `jku` names.
pub const WEBHOOK_KEY_ID: &str = "emulator-webhook-key";

/// The most delivery attempts of one webhook, the first included; after the last failed
/// one the webhook is abandoned (and counted in [`Stats::webhooks_abandoned`](crate::Stats)).
pub const WEBHOOK_MAX_ATTEMPTS: u32 = 8;

/// The wait after the first failed attempt; each later wait doubles, up to
/// [`WEBHOOK_RETRY_CAP`] (1 s, 2 s, 4 s, ... 32 s, 60 s). Tests can shorten it with
/// [`Emulator::set_webhook_retry_base`](crate::Emulator::set_webhook_retry_base).
pub const WEBHOOK_RETRY_BASE: Duration = Duration::from_secs(1);

/// The longest wait between two attempts.
pub const WEBHOOK_RETRY_CAP: Duration = Duration::from_secs(60);

/// How long one attempt may take, from connecting to the response headers, before it counts
/// as failed.
pub const WEBHOOK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// `X-Tl-Webhook-Timestamp` as a webhook's `Tl-Signature` lists it among its signed headers
/// (`tl_headers`), in TrueLayer's casing.
const TIMESTAMP_AS_SIGNED: &str = "X-Tl-Webhook-Timestamp";

/// A webhook event: its id, type and JSON body, the same on every delivery attempt.
pub(crate) struct Event {
    pub(crate) event_id: String,
    pub(crate) event_type: &'static str,
    pub(crate) body: Bytes,
}

/// An event on its way to a URL.
pub(crate) struct Webhook {
    pub(crate) url: Uri,
    pub(crate) event: Event,
}

/// The webhook key, its `jku`, the HTTP client webhooks go out with, where they go and
/// those waiting.
pub(crate) struct Webhooks {
    key: KeyPair,
    jku: String,
    client: Client<HttpConnector, Full<Bytes>>,
    control: Mutex<Control>,
}

#[derive(Default)]
struct Control {
    /// Where webhooks go; none are sent without one.
    url: Option<Uri>,
    /// The first retry delay, when not [`WEBHOOK_RETRY_BASE`].
    retry_base: Option<Duration>,
    /// Webhooks waiting for delivery, per subject (a payment id), in order. A subject has an
    /// entry exactly while a task is delivering its queue.
    outbox: HashMap<String, VecDeque<Webhook>>,
}

impl Webhooks {
    /// A new key, published at `{base_url}/webhooks/jwks`.
    pub(crate) fn new(base_url: &str) -> Self {
        // A new connection for each attempt: a receiver that closes idle connections cannot
        // turn an attempt into a spurious failure.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Webhooks {
            key: KeyPair::generate(),
            jku: format!("{base_url}/webhooks/jwks"),
            client,
            control: Mutex::default(),
        }
    }

    pub(crate) fn jku(&self) -> &str {
        &self.jku
    }

    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": [self.key.jwk(WEBHOOK_KEY_ID)] })
    }

    pub(crate) fn public_pem(&self) -> String {
        self.key.public_pem()
    }

    /// The `Tl-Signature` of a webhook POSTed to `path` at `timestamp` with `body`.
    pub(crate) fn sign(&self, path: &str, timestamp: &str, body: &[u8]) -> String {
        self.key.sign(
            WEBHOOK_KEY_ID,
            &self.jku,
            "POST",
            path,
            &[
                (TIMESTAMP_AS_SIGNED, timestamp),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    /// Sets where webhooks go from now on; `None` stops sending them.
    pub(crate) fn set_url(&self, url: Option<Uri>) {
        lock(&self.control).url = url;
    }

    /// The wait after a webhook's first failed attempt.
    pub(crate) fn retry_base(&self) -> Duration {
        lock(&self.control).retry_base.unwrap_or(WEBHOOK_RETRY_BASE)
    }

    /// Sets the wait after a webhook's first failed attempt.
    pub(crate) fn set_retry_base(&self, base: Duration) {
        lock(&self.control).retry_base = Some(base);
    }

    /// Queues `events` for `subject` to the URL set now, if one is. Returns true when
    /// `subject` had no queue, so the caller must start [`deliver_queue`] for it.
    pub(crate) fn enqueue(&self, subject: &str, events: Vec<Event>) -> bool {
        let mut control = lock(&self.control);
        let Some(url) = control.url.clone() else {
            return false;
        };
        if events.is_empty() {
            return false;
        }
        let entry = control.outbox.entry(subject.to_owned());
        let start = matches!(entry, Entry::Vacant(_));
        entry
            .or_default()
            .extend(events.into_iter().map(|event| Webhook {
                url: url.clone(),
                event,
            }));
        start
    }

    /// The next webhook queued for `subject`; `None` (and the queue gone, so the next
    /// webhook starts a new delivery task) when there is none.
    fn next(&self, subject: &str) -> Option<Webhook> {
        let mut control = lock(&self.control);
        let next = control
            .outbox
            .get_mut(subject)
            .and_then(VecDeque::pop_front);
        if next.is_none() {
            control.outbox.remove(subject);
        }
        next
    }
}

/// Checks a webhook URL: absolute, `http://` (the emulator has no TLS client), with a host.
pub(crate) fn parse_url(url: &str) -> Result<Uri, Error> {
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| Error::WebhookUrlInvalid {
            url: redact_url(url),
            source: e.into(),
        })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(Error::WebhookUrlHttps {
                url: redact_url(url),
            });
        }
        Some(other) => {
            return Err(Error::WebhookUrlScheme {
                url: redact_url(url),
                scheme: other.to_owned(),
            });
        }
        None => {
            return Err(Error::WebhookUrlRelative {
                url: redact_url(url),
            });
        }
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => Ok(uri),
        _ => Err(Error::WebhookUrlHost {
            url: redact_url(url),
        }),
    }
}

/// The wait after failed attempt number `attempt` (1 for the first).
pub(crate) fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(WEBHOOK_RETRY_CAP)
}

/// Delivers the webhooks queued for `subject`, one after the other, until none is left.
pub(crate) async fn deliver_queue(state: Arc<State>, subject: String) {
    while let Some(webhook) = state.webhooks.next(&subject) {
        deliver(&state, &webhook).await;
    }
}

/// Delivers one webhook: re-stamped and re-signed on each attempt, retried with backoff
/// until answered 2xx or [`WEBHOOK_MAX_ATTEMPTS`] have failed.
async fn deliver(state: &State, webhook: &Webhook) {
    let path = webhook.url.path();
    let event = &webhook.event;
    // Logged without any query string, which may carry a receiver's secret.
    let logged_url = format!(
        "{}://{}{path}",
        webhook.url.scheme_str().unwrap_or("http"),
        webhook.url.authority().map_or("", |a| a.as_str())
    );
    for attempt in 1..=WEBHOOK_MAX_ATTEMPTS {
        // The real time, not the emulator's movable clock (`advance_clock` is for expiring
        // tokens): receivers check this against their own clock, as TrueLayer's is.
        let timestamp = rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
        let signature = state.webhooks.sign(path, &timestamp, &event.body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(webhook.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(X_TL_WEBHOOK_TIMESTAMP, &timestamp)
            .header(TL_SIGNATURE, &signature)
            .header(header::USER_AGENT, "truelayer-auth-emulator")
            .body(Full::new(event.body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, event_id = %event.event_id, "webhook request could not be built; abandoned");
                state.stats.count(Counter::WebhookAbandoned);
                return;
            }
        };
        state.stats.count(Counter::WebhookSent);
        let outcome = tokio::time::timeout(
            WEBHOOK_ATTEMPT_TIMEOUT,
            state.webhooks.client.request(request),
        )
        .await;
        let failure = match outcome {
            Ok(Ok(response)) if response.status().is_success() => {
                state.stats.count(Counter::WebhookDelivered);
                tracing::debug!(
                    event_id = %event.event_id,
                    event_type = event.event_type,
                    attempt,
                    status = response.status().as_u16(),
                    "webhook delivered"
                );
                return;
            }
            Ok(Ok(response)) => format!("answered {}", response.status()),
            Ok(Err(e)) => format!("request failed: {}", chain(&e)),
            Err(_) => format!("no answer within {WEBHOOK_ATTEMPT_TIMEOUT:?}"),
        };
        if attempt == WEBHOOK_MAX_ATTEMPTS {
            state.stats.count(Counter::WebhookAbandoned);
            tracing::warn!(
                event_id = %event.event_id,
                event_type = event.event_type,
                url = %logged_url,
                attempt,
                "webhook {failure}; abandoned after {WEBHOOK_MAX_ATTEMPTS} attempts"
            );
            return;
        }
        let delay = retry_delay(state.webhooks.retry_base(), attempt);
        tracing::warn!(
            event_id = %event.event_id,
            event_type = event.event_type,
            url = %logged_url,
            attempt,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "webhook {failure}; will retry"
        );
        tokio::time::sleep(delay).await;
    }
}

/// `POST /emulator/webhooks` and the webhook JWKS, `GET /webhooks/jwks`.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/emulator/webhooks", post(set_url))
        .route("/webhooks/jwks", get(jwks))
}

/// `GET /webhooks/jwks`: the webhook signing key, cacheable for five minutes.
async fn jwks(AxumState(state): AxumState<Arc<State>>) -> Response {
    (
        [(header::CACHE_CONTROL, "max-age=300")],
        Json(state.webhooks.jwks()),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: Option<String>,
}

/// `POST /emulator/webhooks` with `{"url": "http://..."}`, or `{"url": null}` to stop
/// sending webhooks.
async fn set_url(AxumState(state): AxumState<Arc<State>>, body: RequestBody) -> Response {
    let body: WebhookBody = match crate::admin::parse(&body) {
        Ok(b) => b,
        Err(why) => return crate::admin::bad_request(why),
    };
    match body.url.as_deref().map(parse_url).transpose() {
        Ok(url) => {
            state.webhooks.set_url(url);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => crate::admin::bad_request(chain(&why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_1_2_4_up_to_60_seconds() {
        let delays: Vec<u64> = (1..WEBHOOK_MAX_ATTEMPTS)
            .map(|attempt| retry_delay(WEBHOOK_RETRY_BASE, attempt).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60]);
        assert_eq!(retry_delay(WEBHOOK_RETRY_BASE, 40), WEBHOOK_RETRY_CAP);
        assert_eq!(
            retry_delay(Duration::from_millis(10), 3),
            Duration::from_millis(40)
        );
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(parse_url("http://127.0.0.1:9000/hooks").is_ok());
        assert!(matches!(
            parse_url("https://example.com/hooks"),
            Err(Error::WebhookUrlHttps { .. })
        ));
        assert!(matches!(
            parse_url("ftp://example.com/"),
            Err(Error::WebhookUrlScheme { scheme, .. }) if scheme == "ftp"
        ));
        assert!(matches!(
            parse_url("/hooks"),
            Err(Error::WebhookUrlRelative { .. })
        ));
        assert!(matches!(
            parse_url("not a url"),
            Err(Error::WebhookUrlInvalid { .. })
        ));
        let Err(error) = parse_url("http://user:pw@example.com/?key=s3cret") else {
            panic!("user information is refused");
        };
        assert!(matches!(error, Error::WebhookUrlHost { .. }));
        let shown = format!("{error} {error:?}");
        assert!(
            !shown.contains("pw") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
