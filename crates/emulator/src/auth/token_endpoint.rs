//! `POST /connect/token`: the client_credentials grant, as TrueLayer documents it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::Authorization;
use crate::faults;
use crate::server::KillSwitch;
use crate::state::State;
use crate::stats::Counter;

#[derive(Deserialize, Default)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

pub(crate) async fn token(
    AxumState(state): AxumState<Arc<State>>,
    kill: Option<axum::Extension<KillSwitch>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.stats.count(Counter::TokenRequest);
    let latency = state.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = state.faults.next() {
        state.stats.count(Counter::FaultServed);
        if let Some(response) = faults::serve(fault, kill.map(|k| k.0)).await {
            return response;
        }
    }
    let response = grant(&state, &headers, &body);
    if response.status() != StatusCode::OK {
        state.stats.count(Counter::TokenError);
    }
    response
}

fn grant(state: &State, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let form: TokenForm = if content_type.starts_with("application/json") {
        match serde_json::from_slice(body) {
            Ok(f) => f,
            Err(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the JSON body is malformed",
                );
            }
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        match serde_urlencoded::from_bytes(body) {
            Ok(f) => f,
            Err(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the form body is malformed",
                );
            }
        }
    } else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send application/x-www-form-urlencoded or application/json",
        );
    };

    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported for payments tokens",
            );
        }
    }
    let (client_id, secret) = match (form.client_id, form.client_secret, basic_auth(headers)) {
        (Some(id), Some(secret), _) => (id, secret),
        (_, _, Some(pair)) => pair,
        (None, _, None) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_id is required",
            );
        }
        (Some(_), None, None) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    };
    let requested = form.scope.unwrap_or_default();
    if requested.trim().is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope is required",
        );
    }
    match state.auth.authorize(&client_id, &secret, &requested) {
        Authorization::InvalidClient => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ),
        Authorization::InvalidScope(scope) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("the scope '{scope}' is not allowed for this client"),
        ),
        Authorization::Granted { scopes } => {
            let lifetime = state.auth.lifetime_secs();
            let joined = scopes.join(" ");
            let access_token =
                state
                    .auth
                    .issue(&client_id, scopes, lifetime, state.clock.now_unix());
            state.stats.count(Counter::TokenIssued);
            let mut response = Json(json!({
                "access_token": access_token,
                "expires_in": lifetime,
                "token_type": "Bearer",
                "scope": joined,
            }))
            .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}
