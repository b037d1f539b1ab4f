//! The Payments API stand-in: payments, their statuses and the webhooks their changes send,
//! `Idempotency-Key`s, the API's routes (`api`) and the admin routes that move payments.

mod api;
mod events;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub use status::PaymentStatus;

use crate::admin::{bad_request, parse};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::state::{State, lock};
use crate::webhooks::{Event, deliver_queue};

/// Payments, the `Idempotency-Key`s they were created with, and how the API behaves.
#[derive(Default)]
pub(crate) struct Payments {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Payment id → the payment: `id`, `status`, `client_id`, the creating `request`, and
    /// once failed `failure_stage` and `failure_reason`.
    payments: HashMap<String, Value>,
    /// Idempotency keys: (client_id, key) → what the first request was and got.
    idempotency: HashMap<(String, String), Idempotent>,
    /// The delay before every Payments API answer.
    api_latency: Duration,
    /// When set, each payment created advances one status this often until settled.
    step: Option<Duration>,
}

/// What an `Idempotency-Key` has seen.
#[derive(Clone)]
struct Idempotent {
    body: Vec<u8>,
    /// The first answer, once there is one; `None` while the first request is in flight.
    answer: Option<(u16, Value)>,
}

/// What a new request with an `Idempotency-Key` should get.
pub(crate) enum IdempotencyCheck {
    /// A new key: go ahead (it is now in flight).
    New,
    /// The same key and body as an earlier request: its answer again.
    Repeat(u16, Value),
    /// The same key, still in flight.
    InFlight,
    /// The same key with a different body.
    Conflict,
}

/// A change of a payment's status.
pub(crate) enum Change {
    /// Forward to this status, through every status between.
    To(PaymentStatus),
    /// Forward to the next status.
    Next,
    /// To `failed`, for this reason.
    Fail(String),
}

impl Payments {
    /// Stores a new payment.
    pub(crate) fn store(&self, id: String, payment: Value) {
        lock(&self.inner).payments.insert(id, payment);
    }

    /// A payment as `GET /v3/payments/{id}` shows it.
    pub(crate) fn view(&self, id: &str) -> Option<Value> {
        let inner = lock(&self.inner);
        let payment = inner.payments.get(id)?;
        let mut view = json!({ "id": payment["id"], "status": payment["status"] });
        if payment["status"] == "failed" {
            view["failure_stage"] = payment["failure_stage"].clone();
            view["failure_reason"] = payment["failure_reason"].clone();
        }
        Some(view)
    }

    /// The delay before every Payments API answer.
    pub(crate) fn api_latency(&self) -> Duration {
        lock(&self.inner).api_latency
    }

    /// Sets the delay before every Payments API answer.
    pub(crate) fn set_api_latency(&self, latency: Duration) {
        lock(&self.inner).api_latency = latency;
    }

    /// Sets the schedule of payments created from now on.
    pub(crate) fn set_step(&self, step: Option<Duration>) {
        lock(&self.inner).step = step;
    }

    /// Takes `key` for a request of `client_id` with `body`, or says why not.
    pub(crate) fn check_idempotency(
        &self,
        client_id: &str,
        key: &str,
        body: &[u8],
    ) -> IdempotencyCheck {
        let mut inner = lock(&self.inner);
        let slot = (client_id.to_owned(), key.to_owned());
        match inner.idempotency.get(&slot) {
            None => {
                inner.idempotency.insert(
                    slot,
                    Idempotent {
                        body: body.to_vec(),
                        answer: None,
                    },
                );
                IdempotencyCheck::New
            }
            Some(seen) if seen.body != body => IdempotencyCheck::Conflict,
            Some(Idempotent { answer: None, .. }) => IdempotencyCheck::InFlight,
            Some(Idempotent {
                answer: Some((status, body)),
                ..
            }) => IdempotencyCheck::Repeat(*status, body.clone()),
        }
    }

    /// Records the first answer to an idempotency key (or forgets a key whose request
    /// failed, so it can be tried again).
    pub(crate) fn answer_idempotency(
        &self,
        client_id: &str,
        key: &str,
        answer: Option<(u16, Value)>,
    ) {
        let mut inner = lock(&self.inner);
        let slot = (client_id.to_owned(), key.to_owned());
        match answer {
            Some(answer) => {
                if let Some(seen) = inner.idempotency.get_mut(&slot) {
                    seen.answer = Some(answer);
                }
            }
            None => {
                inner.idempotency.remove(&slot);
            }
        }
    }

    /// Changes payment `id`'s status at `now` (RFC 3339), handing the webhooks of every
    /// status it passes to `send` while still holding the lock, so that a payment's webhooks
    /// are queued in the order of its statuses. Returns the status it is in now.
    fn change(
        &self,
        id: &str,
        change: Change,
        now: &str,
        send: impl FnOnce(Vec<Event>),
    ) -> Result<&'static str, Error> {
        let mut inner = lock(&self.inner);
        let payment = inner
            .payments
            .get_mut(id)
            .ok_or_else(|| Error::UnknownPayment {
                payment_id: id.to_owned(),
            })?;
        let current = match payment["status"].as_str().unwrap_or_default() {
            "failed" => {
                return Err(Error::PaymentFailed {
                    payment_id: id.to_owned(),
                });
            }
            status => status.parse::<PaymentStatus>()?,
        };
        if current == PaymentStatus::Settled {
            return Err(Error::PaymentSettled {
                payment_id: id.to_owned(),
            });
        }
        let mut events = Vec::new();
        let now_in = match change {
            Change::Fail(reason) => {
                payment["status"] = json!("failed");
                payment["failure_stage"] = json!(current.as_str());
                payment["failure_reason"] = json!(reason);
                events.push(events::failed_event(payment, current, &reason, now));
                "failed"
            }
            Change::To(_) | Change::Next => {
                let to = match change {
                    Change::To(to) => to,
                    _ => current.next().unwrap_or(current),
                };
                if to == current {
                    return Err(Error::PaymentAlreadyInStatus {
                        payment_id: id.to_owned(),
                        status: current,
                    });
                }
                if to < current {
                    return Err(Error::PaymentCannotMoveBack {
                        payment_id: id.to_owned(),
                        status: current,
                        to,
                    });
                }
                let mut status = current;
                while let Some(next) = status.next().filter(|next| *next <= to) {
                    status = next;
                    payment["status"] = json!(status.as_str());
                    events.extend(events::status_event(payment, status, now));
                }
                status.as_str()
            }
        };
        send(events);
        Ok(now_in)
    }
}

/// Moves a payment to another status, sending the webhooks of every status it passes (when a
/// webhook URL is set). Returns the status it is in now.
pub(crate) fn move_payment(
    state: &Arc<State>,
    id: &str,
    change: Change,
) -> Result<&'static str, Error> {
    let now = rfc3339(state.clock.now_unix());
    let mut start = false;
    let status = state.payments.change(id, change, &now, |events| {
        start = state.webhooks.enqueue(id, events);
    })?;
    if start {
        state
            .tasks
            .spawn(deliver_queue(state.clone(), id.to_owned()));
    }
    Ok(status)
}

/// With a payment schedule set, moves the new payment `id` forward one status each step
/// until it is settled (or another change makes it final).
fn schedule(state: &Arc<State>, id: String) {
    let Some(step) = lock(&state.payments.inner).step else {
        return;
    };
    // The task holds no strong reference between steps: a dropped emulator is gone.
    let weak = Arc::downgrade(state);
    state.tasks.spawn(async move {
        loop {
            tokio::time::sleep(step).await;
            let Some(state) = weak.upgrade() else { return };
            match move_payment(&state, &id, Change::Next) {
                Ok(status) if status != PaymentStatus::Settled.as_str() => {}
                Ok(_) => return,
                Err(why) => {
                    tracing::debug!(payment_id = %id, "payment schedule stopped: {why}");
                    return;
                }
            }
        }
    });
}

/// The Payments API (`POST /v3/payments`, `GET /v3/payments/{id}`, `POST /test-signature`)
/// and the admin routes that move payments.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/v3/payments", post(api::create_payment))
        .route("/v3/payments/{id}", get(api::get_payment))
        .route("/test-signature", post(api::test_signature))
        .route("/emulator/payment-schedule", post(payment_schedule))
        .route("/emulator/payments/{id}/status", post(payment_status))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    step_millis: Option<u64>,
}

/// `POST /emulator/payment-schedule` with `{"step_millis": N}`, or `null` to stop advancing
/// payments created afterwards.
async fn payment_schedule(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<ScheduleBody>(&body) {
        Ok(body) => {
            state
                .payments
                .set_step(body.step_millis.map(Duration::from_millis));
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
async fn payment_status(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: StatusBody = match parse(&body) {
        Ok(b) => b,
        Err(why) => return bad_request(why),
    };
    let change = match (body.status.as_str(), body.failure_reason) {
        ("failed", Some(reason)) if !reason.trim().is_empty() => Change::Fail(reason),
        ("failed", _) => return bad_request("a failed status needs a failure_reason"),
        (_, Some(_)) => return bad_request("failure_reason goes only with the failed status"),
        (status, None) => match status.parse::<PaymentStatus>() {
            Ok(to) => Change::To(to),
            Err(why) => return bad_request(why.to_string()),
        },
    };
    match move_payment(&state, &id, change) {
        Ok(_) => match state.payments.view(&id) {
            Some(view) => Json(view).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        Err(e) => {
            let status = match e {
                Error::UnknownPayment { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            (status, Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}
