//! `POST /connect/token`: the client_credentials grant, as TrueLayer documents it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::faults::Fault;
use crate::server::KillSwitch;
use crate::state::{Authorization, Counter, State};

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
    state.count(Counter::TokenRequest);
    let latency = state.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = state.next_fault() {
        state.count(Counter::FaultServed);
        match fault {
            Fault::Delay { millis } => tokio::time::sleep(Duration::from_millis(millis)).await,
            other => return fault_response(other, kill.map(|k| k.0)).await,
        }
    }
    let response = grant(&state, &headers, &body);
    if response.status() != StatusCode::OK {
        state.count(Counter::TokenError);
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
    match state.authorize(&client_id, &secret, &requested) {
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
            let lifetime = state.lifetime_secs();
            let joined = scopes.join(" ");
            let access_token = state.issue(&client_id, scopes, lifetime);
            state.count(Counter::TokenIssued);
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

pub(crate) fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

async fn fault_response(fault: Fault, kill: Option<KillSwitch>) -> Response {
    match fault {
        Fault::Status {
            status,
            retry_after,
        } => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = status_or_500(status);
            if let Some(after) = retry_after.and_then(|a| HeaderValue::from_str(&a).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, after);
            }
            response
        }
        Fault::Body {
            status,
            content_type,
            body,
        } => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status_or_500(status);
            if let Ok(ct) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Fault::Redirect { location } => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            if let Ok(l) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, l);
            }
            response
        }
        Fault::Truncate => {
            // Promise 1000 bytes, send a few, then fail the body: hyper closes the connection.
            let mut response = Response::new(Body::new(TruncatedBody::default()));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Fault::DropConnection => {
            if let Some(kill) = kill {
                kill.0.notify_one();
            }
            // The connection task drops this request with its connection.
            std::future::pending::<Response>().await
        }
        Fault::Delay { .. } => unreachable!("delays are applied before answering"),
    }
}

fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// One chunk of a token body, a pause (so hyper flushes the headers and the chunk), then an
/// error: the client sees a body cut short.
#[derive(Default)]
struct TruncatedBody {
    step: u8,
}

impl http_body::Body for TruncatedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        self.step += 1;
        match self.step {
            1 => {
                let chunk = Bytes::from_static(b"{\"access_token\":\"eyJ");
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            2 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(Some(Err(std::io::Error::other("truncated on purpose")))),
        }
    }
}
