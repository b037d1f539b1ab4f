//! A small Payments API stand-in that checks requests as TrueLayer's API does: the bearer
//! token, and on POSTs the `Tl-Signature` and `Idempotency-Key`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use truelayer_auth_http::{IDEMPOTENCY_KEY, TL_SIGNATURE};

use super::IdempotencyCheck;
use crate::auth::Claims;
use crate::error::Error;
use crate::signature;
use crate::state::State;
use crate::stats::Counter;

pub(crate) async fn create_payment(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Err(r) = check_signature(
        &state,
        Some(&claims.client_id),
        "POST",
        "/v3/payments",
        &headers,
        &body,
    ) {
        return *r;
    }
    let key = idempotency_key(&headers).unwrap_or_default();
    match state
        .payments
        .check_idempotency(&claims.client_id, &key, &body)
    {
        IdempotencyCheck::New => {}
        IdempotencyCheck::Repeat(status, answer) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return (status, Json(answer)).into_response();
        }
        IdempotencyCheck::InFlight => {
            return problem(
                StatusCode::CONFLICT,
                "Idempotency-Key Concurrency Conflict",
                "a request with this Idempotency-Key is still being processed",
            );
        }
        IdempotencyCheck::Conflict => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key Reuse",
                "this Idempotency-Key was used with a different request body",
            );
        }
    }
    // If the client hangs up during the (injected) latency, the handler is dropped: free the
    // key then too, or every retry with it would be refused as in flight, forever.
    let mut pending = PendingKey {
        state: &state,
        client_id: &claims.client_id,
        key: &key,
        armed: true,
    };
    let latency = state.payments.api_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    pending.armed = false;
    let request: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                state
                    .payments
                    .answer_idempotency(&claims.client_id, &key, None);
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Parameters",
                    "the request body is not JSON",
                );
            }
        }
    };
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(..0x1000),
        fastrand::u64(..1 << 48)
    );
    let payment = json!({
        "id": id,
        "status": "authorization_required",
        "client_id": claims.client_id,
        "request": request,
    });
    state.payments.store(id.clone(), payment);
    state.stats.count(Counter::PaymentCreated);
    super::schedule(&state, id.clone());
    let answer = json!({ "id": id, "status": "authorization_required" });
    state
        .payments
        .answer_idempotency(&claims.client_id, &key, Some((201, answer.clone())));
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// An idempotency key taken for a request still being handled; freed if the handler is
/// dropped before it answers.
struct PendingKey<'a> {
    state: &'a State,
    client_id: &'a str,
    key: &'a str,
    armed: bool,
}

impl Drop for PendingKey<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state
                .payments
                .answer_idempotency(self.client_id, self.key, None);
        }
    }
}

pub(crate) async fn get_payment(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&state, &headers) {
        return *r;
    }
    match state.payments.view(&id) {
        Some(view) => Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "title": "Not Found", "status": 404, "detail": "no such payment" })),
        )
            .into_response(),
    }
}

/// `POST /test-signature`, as in TrueLayer's sandbox: 204 for a valid signature, 401 with
/// the reason otherwise. With a valid bearer token, only that client's keys count.
pub(crate) async fn test_signature(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = headers
        .contains_key(header::AUTHORIZATION)
        .then(|| authenticate(&state, &headers).ok())
        .flatten()
        .map(|claims| claims.client_id);
    match check_signature(
        &state,
        client.as_deref(),
        "POST",
        "/test-signature",
        &headers,
        &body,
    ) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => *r,
    }
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The `Tl-Signature` (from a key registered for `client_id`) and the `Idempotency-Key`.
fn check_signature(
    state: &State,
    client_id: Option<&str>,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Box<Response>> {
    let reason = if idempotency_key(headers).is_none() {
        Err("the Idempotency-Key header is missing".to_owned())
    } else {
        match headers.get(TL_SIGNATURE).and_then(|v| v.to_str().ok()) {
            None => Err("the Tl-Signature header is missing".to_owned()),
            Some(value) => signature::verify(value, method, path, headers, body, |kid| {
                state.signing_keys.get(client_id, kid)
            }),
        }
    };
    reason.map_err(|why| {
        state.stats.count(Counter::SignatureRejection);
        Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            &format!("Invalid request signature: {why}"),
        ))
    })
}

fn authenticate(state: &State, headers: &HeaderMap) -> Result<Claims, Box<Response>> {
    state.stats.count(Counter::ApiRequest);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let result = match token {
        None => Err(unauthorized(None)),
        Some(token) => state
            .auth
            .verify(token, state.clock.now_unix())
            .map_err(|rejection| match rejection {
                Error::TokenLacksScope => insufficient_scope(),
                why => unauthorized(Some(&why.to_string())),
            }),
    };
    if result.is_err() {
        state.stats.count(Counter::ApiRejection);
    }
    result.map_err(Box::new)
}

fn unauthorized(why: Option<&str>) -> Response {
    // RFC 6750 §3: no error code when no token was sent at all.
    let challenge = match why {
        Some(why) => format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
        None => "Bearer".to_owned(),
    };
    with_challenge(
        problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            why.unwrap_or("a bearer token is required"),
        ),
        challenge,
    )
}

fn insufficient_scope() -> Response {
    with_challenge(
        problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the token lacks the payments scope",
        ),
        "Bearer error=\"insufficient_scope\", scope=\"payments\"".to_owned(),
    )
}

fn with_challenge(mut response: Response, challenge: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// A TrueLayer-style problem JSON (RFC 7807) answer.
fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("https://docs.truelayer.com/docs/error-types#{}", title.to_ascii_lowercase().replace(' ', "-")),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "trace_id": format!("{:016x}", fastrand::u64(..)),
    });
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
