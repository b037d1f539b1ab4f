//! A small Payments API stand-in that checks the bearer token like TrueLayer's API does.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::keys::Claims;
use crate::state::{Counter, Rejection, State};

pub(crate) async fn create_payment(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let claims = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
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
        "request": body.map(|b| b.0).unwrap_or(Value::Null),
    });
    state.store_payment(id.clone(), payment);
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "status": "authorization_required" })),
    )
        .into_response()
}

pub(crate) async fn get_payment(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&state, &headers) {
        return *r;
    }
    match state.payment(&id) {
        Some(p) => Json(json!({ "id": p["id"], "status": p["status"] })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "title": "Not Found", "status": 404, "detail": "no such payment" })),
        )
            .into_response(),
    }
}

fn authenticate(state: &State, headers: &HeaderMap) -> Result<Claims, Box<Response>> {
    state.count(Counter::ApiRequest);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let result = match token {
        None => Err(unauthorized(None)),
        Some(token) => state.verify(token).map_err(|rejection| match rejection {
            Rejection::InvalidToken(why) => unauthorized(Some(why)),
            Rejection::InsufficientScope => insufficient_scope(),
        }),
    };
    if result.is_err() {
        state.count(Counter::ApiRejection);
    }
    result.map_err(Box::new)
}

fn unauthorized(why: Option<&str>) -> Response {
    // RFC 6750 §3: no error code when no token was sent at all.
    let challenge = match why {
        Some(why) => format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
        None => "Bearer".to_owned(),
    };
    problem(
        StatusCode::UNAUTHORIZED,
        challenge,
        why.unwrap_or("a bearer token is required"),
    )
}

fn insufficient_scope() -> Response {
    problem(
        StatusCode::FORBIDDEN,
        "Bearer error=\"insufficient_scope\", scope=\"payments\"".to_owned(),
        "the token lacks the payments scope",
    )
}

fn problem(status: StatusCode, challenge: String, detail: &str) -> Response {
    let mut response = (
        status,
        Json(json!({ "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}
