//! `/emulator/*`: fault injection and inspection over HTTP, for tools in other languages.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::faults::Fault;
use crate::state::{RandomFaults, State, random_secret};

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
