//! `POST /connect/token`: the client_credentials grant, as TrueLayer documents it, and the
//! Data API's user grants (`authorization_code`, `refresh_token`: see `user_grants`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{Authorization, user_grants};
use crate::faults;
use crate::server::KillSwitch;
use crate::state::State;
use crate::stats::Counter;

/// A token request's fields, form-encoded or JSON. No `Debug`: it holds secrets.
#[derive(Deserialize, Default)]
pub(super) struct TokenForm {
    pub(super) grant_type: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) redirect_uri: Option<String>,
    pub(super) code: Option<String>,
    pub(super) code_verifier: Option<String>,
    pub(super) refresh_token: Option<String>,
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
    let kill_switch = kill.map(|k| k.0);
    if let Some(fault) = state.faults.next() {
        state.stats.count(Counter::FaultServed);
        if let Some(response) = faults::serve(fault, kill_switch.clone()).await {
            return response;
        }
    }
    let response = match parse_form(&headers, &body) {
        Ok(form) => match form.grant_type.as_deref() {
            Some("authorization_code") => user_grants::authorization_code(&state, &headers, form),
            Some("refresh_token") => {
                user_grants::refresh_token(&state, &headers, form, kill_switch).await
            }
            _ => grant(&state, &headers, form),
        },
        Err(response) => *response,
    };
    if response.status() != StatusCode::OK {
        state.stats.count(Counter::TokenError);
    }
    response
}

/// The request's fields, or the error answer for a malformed body.
fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<TokenForm, Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        serde_json::from_slice(body).map_err(|_| {
            Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the JSON body is malformed",
            ))
        })
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body).map_err(|_| {
            Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the form body is malformed",
            ))
        })
    } else {
        Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send application/x-www-form-urlencoded or application/json",
        )))
    }
}

/// The client_credentials grant (and the refusal of grants nobody supports).
fn grant(state: &State, headers: &HeaderMap, form: TokenForm) -> Response {
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
                "supported grants: client_credentials, authorization_code, refresh_token",
            );
        }
    }
    let (client_id, secret) = match client_credentials(&form, headers) {
        Ok(pair) => pair,
        Err(response) => return *response,
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

/// The client's id and secret, from the body or HTTP Basic, or the error answer.
pub(super) fn client_credentials(
    form: &TokenForm,
    headers: &HeaderMap,
) -> Result<(String, String), Box<Response>> {
    match (&form.client_id, &form.client_secret, basic_auth(headers)) {
        (Some(id), Some(secret), _) => Ok((id.clone(), secret.clone())),
        (_, _, Some(pair)) => Ok(pair),
        (None, _, None) => Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is required",
        ))),
        (Some(_), None, None) => Err(Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ))),
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

/// An OAuth2 error answer: `{"error", "error_description"}`, not cached.
pub(crate) fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}
