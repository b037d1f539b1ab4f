//! The Data API's user grants at `POST /connect/token`: `authorization_code` (a code from
//! the auth dialog for a connection and its first tokens) and `refresh_token` (rotation),
//! with the refresh faults tests inject.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::dialog::{CodeRefused, Exchange, revoke_for_code_reuse};
use super::token_endpoint::{TokenForm, client_credentials, oauth_error};
use crate::data::{Issued, RefreshFault};
use crate::server::KillSwitch;
use crate::state::State;
use crate::stats::Counter;

/// Checks the client's credentials: its id, or the `invalid_client` answer.
fn client(state: &State, form: &TokenForm, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let (id, secret) = client_credentials(form, headers)?;
    if state.auth.authenticate(&id, &secret) {
        Ok(id)
    } else {
        Err(Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )))
    }
}

fn invalid_grant(why: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why)
}

fn tokens(state: &State, issued: &Issued) -> Response {
    state.stats.count(Counter::TokenIssued);
    let mut response = Json(issued.to_json()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `grant_type=authorization_code`: `code`, `redirect_uri`, and `code_verifier` with PKCE.
pub(super) fn authorization_code(state: &State, headers: &HeaderMap, form: TokenForm) -> Response {
    let client_id = match client(state, &form, headers) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let Some(code) = form.code.as_deref().filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is required",
        );
    };
    let now = state.clock.now_unix();
    let exchange = Exchange {
        code,
        client_id: &client_id,
        redirect_uri: form.redirect_uri.as_deref(),
        verifier: form.code_verifier.as_deref(),
        now,
    };
    let result = state.dialog.redeem(
        &exchange,
        |new| {
            state
                .data
                .create(new, now)
                .map_err(|why| CodeRefused(why.0))
        },
        |connection_id| revoke_for_code_reuse(state, connection_id),
    );
    match result {
        Ok(issued) => tokens(state, &issued),
        Err(why) => {
            state.data.count(|s| s.codes_refused += 1);
            invalid_grant(why.0)
        }
    }
}

/// `grant_type=refresh_token`: rotates the connection's tokens, after any injected delay,
/// failure or drop.
pub(super) async fn refresh_token(
    state: &Arc<State>,
    headers: &HeaderMap,
    form: TokenForm,
    kill: Option<KillSwitch>,
) -> Response {
    let client_id = match client(state, &form, headers) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let Some(refresh_token) = form.refresh_token.as_deref().filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let (delay, fault) = state.data.next_refresh_faults();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(RefreshFault::Fail { status, error }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return match error {
                Some(error) => oauth_error(status, &error, "injected by the emulator"),
                None => (status, Body::empty()).into_response(),
            };
        }
        Some(RefreshFault::DropAfterRotating) => {
            // The token is rotated (the old one is spent), and the answer, the only copy of
            // the new refresh token, is lost: the connection closes unanswered.
            let _ = state.data.rotate(
                Some(&client_id),
                refresh_token,
                state.clock.now_unix(),
                false,
            );
            if let Some(kill) = kill {
                kill.0.notify_one();
                return std::future::pending::<Response>().await;
            }
            return StatusCode::BAD_GATEWAY.into_response();
        }
        None => {}
    }
    match state.data.rotate(
        Some(&client_id),
        refresh_token,
        state.clock.now_unix(),
        false,
    ) {
        Ok(issued) => tokens(state, &issued),
        Err(why) => invalid_grant(why.0),
    }
}
