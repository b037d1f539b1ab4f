//! The webhook body: TrueLayer's common envelope and the payment events, typed; any other
//! event kept as raw JSON.

use std::fmt;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::EnvelopeError;
use crate::jwks::truncate;

/// A webhook body: its envelope and its event.
///
/// Event types this crate does not know (TrueLayer adds them: payouts, mandates, refunds)
/// arrive as [`WebhookEvent::Other`] with their JSON, never as an error; so does a known type
/// whose fields do not have the expected shape (logged at `warn`). Unknown fields are
/// ignored, and the payment events' fields other than `payment_id` are optional, so a new
/// field or a missing one does not refuse a webhook TrueLayer would retry for days. Only
/// `type` (or `event_type`) and `event_id` are required, and a top-level key may appear only
/// once: JSON parsers disagree on which of two values counts, so a body with `event_id`
/// twice could be one event to the ledger and another to the handler. (Duplicates inside
/// nested objects keep serde's rule: the last wins.)
///
/// # Example
///
/// ```
/// use truelayer_auth_webhooks::{Webhook, WebhookEvent};
///
/// let body = br#"{"type":"payment_settled","event_id":"b8d4dda0-ff2c-4d77-a6da-4615e4bad941",
///   "event_version":1,"payment_id":"60c0a60ed8d7-4e5b-ac79-401b1d8a8633",
///   "settled_at":"2021-12-12T12:12:12.000Z","payment_method":{"type":"bank_transfer"}}"#;
/// let webhook: Webhook = serde_json::from_slice(body)?;
/// match &webhook.event {
///     WebhookEvent::PaymentSettled(settled) => {
///         assert_eq!(settled.payment_id, "60c0a60ed8d7-4e5b-ac79-401b1d8a8633");
///     }
///     other => panic!("unexpected {}", other.event_type()),
/// }
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Webhook {
    /// The event's id: TrueLayer's retries of one event share it.
    pub event_id: String,
    /// The event schema's version.
    pub event_version: Option<u64>,
    /// The event.
    pub event: WebhookEvent,
}

impl Webhook {
    /// The event's `type` (`payment_settled`, ...).
    pub fn event_type(&self) -> &str {
        self.event.event_type()
    }
}

/// A webhook's event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WebhookEvent {
    /// `payment_authorized`: the payer authorised the payment at their bank.
    PaymentAuthorized(PaymentAuthorized),
    /// `payment_executed`: the bank executed the payment.
    PaymentExecuted(PaymentExecuted),
    /// `payment_settled`: the money arrived in the merchant account.
    PaymentSettled(PaymentSettled),
    /// `payment_failed`: the payment will not complete.
    PaymentFailed(PaymentFailed),
    /// Any other event type, with its whole body.
    Other {
        /// The event's `type`.
        event_type: String,
        /// The whole body.
        body: Value,
    },
}

impl WebhookEvent {
    /// The event's `type`.
    pub fn event_type(&self) -> &str {
        match self {
            WebhookEvent::PaymentAuthorized(_) => "payment_authorized",
            WebhookEvent::PaymentExecuted(_) => "payment_executed",
            WebhookEvent::PaymentSettled(_) => "payment_settled",
            WebhookEvent::PaymentFailed(_) => "payment_failed",
            WebhookEvent::Other { event_type, .. } => event_type,
        }
    }

    /// The payment the event is about, for the payment events.
    pub fn payment_id(&self) -> Option<&str> {
        match self {
            WebhookEvent::PaymentAuthorized(e) => Some(&e.payment_id),
            WebhookEvent::PaymentExecuted(e) => Some(&e.payment_id),
            WebhookEvent::PaymentSettled(e) => Some(&e.payment_id),
            WebhookEvent::PaymentFailed(e) => Some(&e.payment_id),
            WebhookEvent::Other { .. } => None,
        }
    }
}

/// `payment_authorized`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PaymentAuthorized {
    /// The payment.
    pub payment_id: String,
    /// When it was authorised (RFC 3339).
    #[serde(default)]
    pub authorized_at: Option<String>,
    /// How it is paid (`{"type": "bank_transfer", ...}`).
    #[serde(default)]
    pub payment_method: Option<Value>,
    /// The metadata given when the payment was created.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// `payment_executed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PaymentExecuted {
    /// The payment.
    pub payment_id: String,
    /// When it was executed (RFC 3339).
    #[serde(default)]
    pub executed_at: Option<String>,
    /// How it is paid.
    #[serde(default)]
    pub payment_method: Option<Value>,
    /// The metadata given when the payment was created.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// `payment_settled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PaymentSettled {
    /// The payment.
    pub payment_id: String,
    /// When it settled (RFC 3339).
    #[serde(default)]
    pub settled_at: Option<String>,
    /// How it was paid.
    #[serde(default)]
    pub payment_method: Option<Value>,
    /// The account it was paid from (`id`, `account_holder_name`, identifiers).
    #[serde(default)]
    pub payment_source: Option<Value>,
    /// The payer's user id.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The metadata given when the payment was created.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// `payment_failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PaymentFailed {
    /// The payment.
    pub payment_id: String,
    /// When it failed (RFC 3339).
    #[serde(default)]
    pub failed_at: Option<String>,
    /// The status it failed in (`authorization_required`, `authorizing`, `authorized`, ...).
    #[serde(default)]
    pub failure_stage: Option<String>,
    /// Why (`authorization_failed`, `provider_rejected`, `insufficient_funds`, ...).
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// How it was to be paid.
    #[serde(default)]
    pub payment_method: Option<Value>,
    /// The metadata given when the payment was created.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

impl<'de> Deserialize<'de> for Webhook {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let envelope = Envelope::deserialize(deserializer)?;
        Webhook::from_envelope(envelope).map_err(|error| match error {
            EnvelopeError::MissingEventId => D::Error::missing_field("event_id"),
            EnvelopeError::MissingType => D::Error::missing_field("type"),
            other => D::Error::custom(other),
        })
    }
}

impl Webhook {
    /// Reads a body as the layer does for its ledger: the same rules as `Deserialize`, with
    /// a typed error.
    pub(crate) fn parse(body: &[u8]) -> Result<Webhook, EnvelopeError> {
        let envelope: Envelope =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::NotAnObject {
                category: match e.classify() {
                    serde_json::error::Category::Io => "io",
                    serde_json::error::Category::Syntax => "syntax",
                    serde_json::error::Category::Data => "data",
                    serde_json::error::Category::Eof => "eof",
                },
                line: e.line(),
                column: e.column(),
            })?;
        Webhook::from_envelope(envelope)
    }

    fn from_envelope(envelope: Envelope) -> Result<Webhook, EnvelopeError> {
        if let Some(key) = envelope.duplicate {
            return Err(EnvelopeError::DuplicateKey {
                key: truncate(&key, 100),
            });
        }
        let body = Value::Object(envelope.fields);
        let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
        // v3 webhooks say `type`; older (payouts) ones `event_type`.
        let event_type = text("type")
            .or_else(|| text("event_type"))
            .ok_or(EnvelopeError::MissingType)?;
        let event_id = text("event_id").ok_or(EnvelopeError::MissingEventId)?;
        let event_version = body.get("event_version").and_then(Value::as_u64);
        // A known type whose fields changed shape (TrueLayer evolves its schemas) is kept
        // as raw JSON rather than refused: a refused webhook is retried for days, then lost.
        fn typed<T: serde::de::DeserializeOwned>(body: &Value) -> Option<T> {
            T::deserialize(body).ok()
        }
        let event = match event_type.as_str() {
            "payment_authorized" => typed(&body).map(WebhookEvent::PaymentAuthorized),
            "payment_executed" => typed(&body).map(WebhookEvent::PaymentExecuted),
            "payment_settled" => typed(&body).map(WebhookEvent::PaymentSettled),
            "payment_failed" => typed(&body).map(WebhookEvent::PaymentFailed),
            _ => None,
        };
        let event = match event {
            Some(event) => event,
            None => {
                if KNOWN.contains(&event_type.as_str()) {
                    tracing::warn!(
                        event_type = %event_type,
                        "a known webhook type did not match its typed shape; kept as raw JSON"
                    );
                }
                WebhookEvent::Other { event_type, body }
            }
        };
        Ok(Webhook {
            event_id,
            event_version,
            event,
        })
    }
}

const KNOWN: [&str; 4] = [
    "payment_authorized",
    "payment_executed",
    "payment_settled",
    "payment_failed",
];

/// A body's top-level object, and the first key it holds twice. The whole object is read
/// even after a duplicate, so a body that is not JSON is told apart from one that is.
struct Envelope {
    fields: Map<String, Value>,
    duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Envelope;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut envelope = Envelope {
                    fields: Map::new(),
                    duplicate: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if envelope.fields.contains_key(&key) {
                        envelope.duplicate.get_or_insert(key);
                    } else {
                        envelope.fields.insert(key, value);
                    }
                }
                Ok(envelope)
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_stay_raw_and_known_ones_are_typed() {
        let other: Webhook = serde_json::from_str(
            r#"{"type":"payout_executed","event_id":"e1","event_version":1,"payout_id":"p"}"#,
        )
        .unwrap();
        assert_eq!(other.event_type(), "payout_executed");
        match &other.event {
            WebhookEvent::Other { body, .. } => assert_eq!(body["payout_id"], "p"),
            e => panic!("{e:?}"),
        }
        let failed: Webhook = serde_json::from_str(
            r#"{"type":"payment_failed","event_id":"e2","payment_id":"p2",
                "failure_stage":"authorizing","failure_reason":"provider_rejected","new":1}"#,
        )
        .unwrap();
        match failed.event {
            WebhookEvent::PaymentFailed(f) => {
                assert_eq!(f.failure_reason.as_deref(), Some("provider_rejected"));
                assert_eq!(f.failure_stage.as_deref(), Some("authorizing"));
            }
            e => panic!("{e:?}"),
        }
        // TrueLayer's vector uses the older `event_type`.
        let legacy: Webhook =
            serde_json::from_str(r#"{"event_type":"example","event_id":"e3"}"#).unwrap();
        assert_eq!(legacy.event_type(), "example");
        assert!(serde_json::from_str::<Webhook>(r#"{"type":"x"}"#).is_err());
        let drifted: Webhook =
            serde_json::from_str(r#"{"type":"payment_settled","event_id":"e","settled_at":5}"#)
                .unwrap();
        assert!(
            matches!(&drifted.event, WebhookEvent::Other { event_type, .. } if event_type == "payment_settled"),
            "a known type in an unexpected shape is kept, not refused: {drifted:?}"
        );
        assert_eq!(
            Webhook::parse(br#"{"type":"x","event_id":"abc","x":[1]}"#)
                .unwrap()
                .event_id,
            "abc"
        );
        assert!(matches!(
            Webhook::parse(b"not json"),
            Err(EnvelopeError::NotAnObject { .. })
        ));
    }

    #[test]
    fn a_top_level_key_twice_is_refused_wherever_it_is_parsed() {
        for body in [
            r#"{"type":"payment_settled","event_id":"a","payment_id":"p","event_id":"b"}"#,
            r#"{"type":"payment_settled","event_id":"a","payment_id":"p","payment_id":"q"}"#,
            r#"{"type":"payment_settled","type":"payment_failed","event_id":"a","payment_id":"p"}"#,
        ] {
            assert!(serde_json::from_str::<Webhook>(body).is_err(), "{body}");
        }
        // Nested objects are the event's own business (metadata is the merchant's).
        let nested: Webhook =
            serde_json::from_str(r#"{"type":"x","event_id":"a","metadata":{"k":1,"k":2}}"#)
                .unwrap();
        assert_eq!(nested.event_id, "a");
    }
}
