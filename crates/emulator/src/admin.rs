//! `/emulator/*`: fault injection and inspection over HTTP, for tools in other languages.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::faults::Fault;
use crate::state::{MoveError, PaymentChange, RandomFaults, State, random_secret};
use crate::webhooks::{PaymentStatus, parse_url};

#[derive(Deserialize)]
pub(crate) struct FaultsBody {
    #[serde(default)]
    faults: Vec<Fault>,
    /// Fail this fraction of later token requests with one of `random` (0 turns it off).
    #[serde(default)]
    random_rate: Option<f64>,
    #[serde(default)]
    random: Vec<Fault>,
}

pub(crate) async fn faults(
    AxumState(state): AxumState<Arc<State>>,
    Json(body): Json<FaultsBody>,
) -> Response {
    state.queue_faults(body.faults);
    if let Some(rate) = body.random_rate {
        state.set_random_faults((rate > 0.0).then(|| RandomFaults {
            rate: rate.min(1.0),
            faults: body.random,
        }));
    }
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn clear(AxumState(state): AxumState<Arc<State>>) -> Response {
    state.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
pub(crate) struct LatencyBody {
    millis: u64,
}

pub(crate) async fn latency(
    AxumState(state): AxumState<Arc<State>>,
    Json(body): Json<LatencyBody>,
) -> Response {
    state.set_latency(Duration::from_millis(body.millis));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
pub(crate) struct LifetimeBody {
    seconds: Option<i64>,
}

pub(crate) async fn lifetime(
    AxumState(state): AxumState<Arc<State>>,
    Json(body): Json<LifetimeBody>,
) -> Response {
    state.set_lifetime(body.seconds);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn rotate(
    AxumState(state): AxumState<Arc<State>>,
    Path(client_id): Path<String>,
) -> Response {
    let secret = random_secret();
    if state.set_secret(&client_id, secret.clone()) {
        Json(json!({ "client_id": client_id, "client_secret": secret })).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "unknown client" })),
        )
            .into_response()
    }
}

pub(crate) async fn revoke(AxumState(state): AxumState<Arc<State>>) -> Response {
    state.revoke_all();
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn stats(AxumState(state): AxumState<Arc<State>>) -> Response {
    Json(state.stats()).into_response()
}

#[derive(Deserialize)]
pub(crate) struct SigningKeyBody {
    kid: String,
    public_key_pem: String,
}

/// `POST /emulator/clients/{id}/signing-keys` with `{"kid": ..., "public_key_pem": ...}`.
pub(crate) async fn register_signing_key(
    AxumState(state): AxumState<Arc<State>>,
    Path(client_id): Path<String>,
    Json(body): Json<SigningKeyBody>,
) -> Response {
    match crate::signature::PublicKey::from_pem(&body.public_key_pem) {
        Ok(key) => {
            state.register_signing_key(&client_id, &body.kid, key);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response(),
    }
}

fn bad_request(why: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": why.into() })),
    )
        .into_response()
}

/// A JSON body, or what is wrong with it.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: Option<String>,
}

/// `POST /emulator/webhooks` with `{"url": "http://..."}`, or `{"url": null}` to stop
/// sending webhooks.
pub(crate) async fn webhooks(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    let body: WebhookBody = match parse(&body) {
        Ok(b) => b,
        Err(why) => return bad_request(why),
    };
    match body.url.as_deref().map(parse_url).transpose() {
        Ok(url) => {
            state.set_webhook_url(url);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    step_millis: Option<u64>,
}

/// `POST /emulator/payment-schedule` with `{"step_millis": N}`, or `null` to stop advancing
/// payments created afterwards.
pub(crate) async fn payment_schedule(
    AxumState(state): AxumState<Arc<State>>,
    body: Bytes,
) -> Response {
    match parse::<ScheduleBody>(&body) {
        Ok(body) => {
            state.set_payment_step(body.step_millis.map(Duration::from_millis));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    #[serde(default)]
    failure_reason: Option<String>,
}

/// `POST /emulator/payments/{id}/status` with `{"status": "settled"}` or
/// `{"status": "failed", "failure_reason": "..."}`: 200 with the payment as
/// `GET /v3/payments/{id}` shows it, 404 for an unknown payment, 409 for a move a payment
/// cannot make (backwards, or from a final status).
pub(crate) async fn payment_status(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: StatusBody = match parse(&body) {
        Ok(b) => b,
        Err(why) => return bad_request(why),
    };
    let change = match (body.status.as_str(), body.failure_reason) {
        ("failed", Some(reason)) if !reason.trim().is_empty() => PaymentChange::Fail(reason),
        ("failed", _) => return bad_request("a failed status needs a failure_reason"),
        (_, Some(_)) => return bad_request("failure_reason goes only with the failed status"),
        (status, None) => match status.parse::<PaymentStatus>() {
            Ok(to) => PaymentChange::To(to),
            Err(why) => return bad_request(why),
        },
    };
    match state.move_payment(&id, change) {
        Ok(_) => match state.payment_view(&id) {
            Some(view) => Json(view).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        Err(e @ MoveError::UnknownPayment(_)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e @ MoveError::Refused(_)) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
