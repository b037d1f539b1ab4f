//! What the admin routes under `/emulator/` share. Each domain serves its own admin routes;
//! [`ADMIN_ROUTES`](crate::ADMIN_ROUTES) lists them all.

use axum::Json;
use axum::http::StatusCode;
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
