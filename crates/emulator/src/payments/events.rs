//! The bodies of TrueLayer's v3 payment webhooks: `payment_authorized`, `payment_executed`,
//! `payment_settled` and `payment_failed`.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::PaymentStatus;
use crate::webhooks::Event;

/// The webhook sent on reaching `status`, with its timestamp field.
fn webhook_of(status: PaymentStatus) -> Option<(&'static str, &'static str)> {
    match status {
        PaymentStatus::AuthorizationRequired | PaymentStatus::Authorizing => None,
        PaymentStatus::Authorized => Some(("payment_authorized", "authorized_at")),
        PaymentStatus::Executed => Some(("payment_executed", "executed_at")),
        PaymentStatus::Settled => Some(("payment_settled", "settled_at")),
    }
}

/// The body of the webhook for a payment reaching `status`, if that status has one.
pub(crate) fn status_event(payment: &Value, status: PaymentStatus, at: &str) -> Option<Event> {
    let (event_type, at_field) = webhook_of(status)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
