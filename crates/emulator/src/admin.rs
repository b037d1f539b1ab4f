//! What the admin routes under `/emulator/` share. Each domain serves its own admin routes;
//! [`ADMIN_ROUTES`](crate::ADMIN_ROUTES) lists them all.
//!
//! A web page the emulator's user visits can send requests to it (it listens on loopback,
//! where the browser is): a `fetch(..., {mode: "no-cors"})` POST reaches the route even
//! though the page cannot read the answer. So [`guard`] refuses, on every admin route but
//! `GET`s, a request with a body that is not `Content-Type: application/json` (415: a page
//! cannot send that without a CORS preflight, which the emulator does not answer) and a
//! request carrying an `Origin` other than the emulator's own (403: browsers send it on
//! cross-origin POSTs, with or without a body). Tools (curl with `-H 'Content-Type:
//! application/json'`, reqwest's `.json(...)`) send neither problem.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// A 400 with `{"error": why}`.
pub(crate) fn bad_request(why: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": why.into() })),
    )
        .into_response()
}

/// A JSON body, or what is wrong with it.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

/// Refuses admin requests a web page could have sent (see the module docs); lets every
/// other request through.
pub(crate) async fn guard(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let admin = path == "/emulator" || path.starts_with("/emulator/");
    if admin && !matches!(*request.method(), Method::GET | Method::HEAD) {
        let headers = request.headers();
        if cross_origin(headers) {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": "admin routes refuse cross-origin requests" })),
            )
                .into_response();
        }
        if has_body(headers) && !is_json(headers) {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({ "error": "admin routes take Content-Type: application/json" })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// An `Origin` header other than `http://{Host}`.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => !origin
            .strip_prefix("http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(host)),
        _ => true,
    }
}

/// Whether the request says it has a body: a non-zero `Content-Length`, or a
/// `Transfer-Encoding`.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => false,
        Some(length) => length.to_str().ok().map(str::trim) != Some("0"),
    }
}

/// `Content-Type: application/json`, parameters (a charset) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}
