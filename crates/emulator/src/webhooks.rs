//! Payment statuses and the webhooks TrueLayer sends as a payment moves through them: the
//! event bodies, the `Tl-Signature` (with a `jku`) and delivery with retries.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

use crate::signature::KeyPair;
use crate::state::{Counter, State};

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

/// The header carrying the time a webhook was sent, signed in its `Tl-Signature`.
const TIMESTAMP_HEADER: &str = "X-Tl-Webhook-Timestamp";

/// Where a payment is, as TrueLayer names its statuses. A payment that fails leaves this
/// sequence for `failed` (see [`Emulator::fail_payment`](crate::Emulator::fail_payment)).
///
/// The order of the variants is the order a payment moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PaymentStatus {
    /// Created; the payer has not started authorising it.
    AuthorizationRequired,
    /// The payer is authorising it at their bank.
    Authorizing,
    /// Authorised by the payer (webhook `payment_authorized`).
    Authorized,
    /// Submitted to the payment scheme (webhook `payment_executed`).
    Executed,
    /// The money has arrived in the merchant account (webhook `payment_settled`); final.
    Settled,
}

impl PaymentStatus {
    const ALL: [PaymentStatus; 5] = [
        PaymentStatus::AuthorizationRequired,
        PaymentStatus::Authorizing,
        PaymentStatus::Authorized,
        PaymentStatus::Executed,
        PaymentStatus::Settled,
    ];

    /// The status as TrueLayer's API writes it, e.g. `authorization_required`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::AuthorizationRequired => "authorization_required",
            PaymentStatus::Authorizing => "authorizing",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Executed => "executed",
            PaymentStatus::Settled => "settled",
        }
    }

    /// The status after this one, `None` after `settled`.
    pub(crate) fn next(self) -> Option<Self> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }

    /// The webhook sent on reaching this status, with its timestamp field.
    fn webhook(self) -> Option<(&'static str, &'static str)> {
        match self {
            PaymentStatus::AuthorizationRequired | PaymentStatus::Authorizing => None,
            PaymentStatus::Authorized => Some(("payment_authorized", "authorized_at")),
            PaymentStatus::Executed => Some(("payment_executed", "executed_at")),
            PaymentStatus::Settled => Some(("payment_settled", "settled_at")),
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PaymentStatus {
    type Err = String;

    /// Parses TrueLayer's name of a status (`failed` is not one of these).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown payment status {s:?}"))
    }
}

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

/// The webhook key, its `jku`, and the HTTP client webhooks go out with.
pub(crate) struct Webhooks {
    key: KeyPair,
    jku: String,
    client: Client<HttpConnector, Full<Bytes>>,
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
                (TIMESTAMP_HEADER, timestamp),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }
}

/// Checks a webhook URL: absolute, `http://` (the emulator has no TLS client), with a host.
pub(crate) fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("the webhook URL {url:?} is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "the webhook URL {url:?} is https, but the emulator has no TLS client: \
                 use an http:// URL (a local receiver, or a tunnel's http address)"
            ));
        }
        Some(other) => {
            return Err(format!(
                "the webhook URL {url:?} has the scheme {other:?}; only http:// is supported"
            ));
        }
        None => {
            return Err(format!(
                "the webhook URL {url:?} is not absolute; give it as http://host:port/path"
            ));
        }
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => Ok(uri),
        Some(_) => Err(format!(
            "the webhook URL {url:?} must name a host, without user information"
        )),
        None => Err(format!("the webhook URL {url:?} has no host")),
    }
}

/// RFC 3339 in UTC to the second, as TrueLayer writes timestamps: `2021-11-29T11:42:55Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&format)
        .unwrap_or_else(|_| unreachable!("a UTC date always formats"))
}

/// The body of the webhook for a payment reaching `status`, if that status has one.
pub(crate) fn status_event(payment: &Value, status: PaymentStatus, at: &str) -> Option<Event> {
    let (event_type, at_field) = status.webhook()?;
    let mut body = base(event_type, payment);
    body.insert(at_field.to_owned(), json!(at));
    if status == PaymentStatus::Settled {
        body.insert(
            "payment_source".to_owned(),
            json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "account_holder_name": "Emulated Payer",
            }),
        );
        if let Some(user_id) = payment["request"]["user"]["id"].as_str() {
            body.insert("user_id".to_owned(), json!(user_id));
        }
    }
    Some(finish(event_type, body))
}

/// The body of `payment_failed`.
pub(crate) fn failed_event(payment: &Value, stage: PaymentStatus, reason: &str, at: &str) -> Event {
    let mut body = base("payment_failed", payment);
    body.insert("failed_at".to_owned(), json!(at));
    body.insert("failure_stage".to_owned(), json!(stage.as_str()));
    body.insert("failure_reason".to_owned(), json!(reason));
    finish("payment_failed", body)
}

fn base(event_type: &str, payment: &Value) -> Map<String, Value> {
    let request = &payment["request"];
    let method = request["payment_method"]["type"]
        .as_str()
        .unwrap_or("bank_transfer");
    let mut body = Map::new();
    body.insert("type".to_owned(), json!(event_type));
    body.insert(
        "event_id".to_owned(),
        json!(uuid::Uuid::new_v4().to_string()),
    );
    body.insert("event_version".to_owned(), json!(1));
    body.insert("payment_id".to_owned(), payment["id"].clone());
    body.insert("payment_method".to_owned(), json!({ "type": method }));
    if let Some(metadata) = request.get("metadata").filter(|m| !m.is_null()) {
        body.insert("metadata".to_owned(), metadata.clone());
    }
    body
}

fn finish(event_type: &'static str, body: Map<String, Value>) -> Event {
    let event_id = body["event_id"].as_str().unwrap_or_default().to_owned();
    let bytes = serde_json::to_vec(&Value::Object(body))
        .unwrap_or_else(|_| unreachable!("JSON values always serialize"));
    Event {
        event_id,
        event_type,
        body: Bytes::from(bytes),
    }
}

/// The wait after failed attempt number `attempt` (1 for the first).
pub(crate) fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(WEBHOOK_RETRY_CAP)
}

/// Delivers the webhooks queued for `payment_id`, one after the other, until none is left.
pub(crate) async fn deliver_queue(state: Arc<State>, payment_id: String) {
    while let Some(webhook) = state.next_webhook(&payment_id) {
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
            .header(TIMESTAMP_HEADER, &timestamp)
            .header("Tl-Signature", &signature)
            .header(header::USER_AGENT, "truelayer-auth-emulator")
            .body(Full::new(event.body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, event_id = %event.event_id, "webhook request could not be built; abandoned");
                state.count(Counter::WebhookAbandoned);
                return;
            }
        };
        state.count(Counter::WebhookSent);
        let outcome = tokio::time::timeout(
            WEBHOOK_ATTEMPT_TIMEOUT,
            state.webhooks.client.request(request),
        )
        .await;
        let failure = match outcome {
            Ok(Ok(response)) if response.status().is_success() => {
                state.count(Counter::WebhookDelivered);
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
            state.count(Counter::WebhookAbandoned);
            tracing::warn!(
                event_id = %event.event_id,
                event_type = event.event_type,
                url = %logged_url,
                attempt,
                "webhook {failure}; abandoned after {WEBHOOK_MAX_ATTEMPTS} attempts"
            );
            return;
        }
        let delay = retry_delay(state.webhook_retry_base(), attempt);
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

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
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
    fn timestamps_are_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339(1_638_186_175), "2021-11-29T11:42:55Z");
    }

    #[test]
    fn statuses_round_trip_and_are_ordered() {
        for status in PaymentStatus::ALL {
            assert_eq!(status.as_str().parse::<PaymentStatus>(), Ok(status));
        }
        assert!("failed".parse::<PaymentStatus>().is_err());
        assert!(PaymentStatus::Authorized < PaymentStatus::Settled);
        assert_eq!(PaymentStatus::Settled.next(), None);
        assert_eq!(
            PaymentStatus::Authorizing.next(),
            Some(PaymentStatus::Authorized)
        );
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(parse_url("http://127.0.0.1:9000/hooks").is_ok());
        assert!(
            parse_url("https://example.com/hooks")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("/hooks").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("http://user:pw@example.com/").is_err());
    }

    #[test]
    fn event_bodies_carry_the_payment_and_request_details() {
        let payment = json!({
            "id": "p-1",
            "status": "executed",
            "request": {
                "payment_method": { "type": "bank_transfer" },
                "user": { "id": "u-1" },
                "metadata": { "order": "42" },
            },
        });
        let settled =
            status_event(&payment, PaymentStatus::Settled, "2021-11-29T11:42:55Z").unwrap();
        let body: Value = serde_json::from_slice(&settled.body).unwrap();
        assert_eq!(body["type"], "payment_settled");
        assert_eq!(body["event_id"], settled.event_id);
        assert_eq!(body["event_version"], 1);
        assert_eq!(body["payment_id"], "p-1");
        assert_eq!(body["payment_method"], json!({ "type": "bank_transfer" }));
        assert_eq!(body["settled_at"], "2021-11-29T11:42:55Z");
        assert_eq!(body["user_id"], "u-1");
        assert_eq!(body["metadata"], json!({ "order": "42" }));
        assert_eq!(
            body["payment_source"]["account_holder_name"],
            "Emulated Payer"
        );
        assert!(status_event(&payment, PaymentStatus::Authorizing, "x").is_none());
        let failed = failed_event(
            &json!({ "id": "p-2", "request": null }),
            PaymentStatus::Authorizing,
            "expired",
            "t",
        );
        let body: Value = serde_json::from_slice(&failed.body).unwrap();
        assert_eq!(body["failure_stage"], "authorizing");
        assert_eq!(body["failure_reason"], "expired");
        assert_eq!(body["failed_at"], "t");
        assert!(body.get("metadata").is_none() && body.get("user_id").is_none());
    }
}
