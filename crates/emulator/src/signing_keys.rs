//! Request-signing public keys, registered per client as TrueLayer Console does, and the admin
//! route that registers one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::signature::PublicKey;
use crate::state::{State, lock};

/// Request-signing public keys: client_id → kid → key.
#[derive(Default)]
pub(crate) struct SigningKeys {
    keys: Mutex<HashMap<String, HashMap<String, PublicKey>>>,
}

impl SigningKeys {
    /// Registers (or replaces) `client_id`'s key `kid`.
    pub(crate) fn register(&self, client_id: &str, kid: &str, key: PublicKey) {
        lock(&self.keys)
            .entry(client_id.to_owned())
            .or_default()
            .insert(kid.to_owned(), key);
    }

    /// Removes `client_id`'s key `kid`; returns whether it had it.
    pub(crate) fn remove(&self, client_id: &str, kid: &str) -> bool {
        lock(&self.keys)
            .get_mut(client_id)
            .is_some_and(|keys| keys.remove(kid).is_some())
    }

    /// The key `kid` of `client_id`, or of any client when none is given.
    pub(crate) fn get(&self, client_id: Option<&str>, kid: &str) -> Option<PublicKey> {
        let keys = lock(&self.keys);
        match client_id {
            Some(client) => keys.get(client)?.get(kid).cloned(),
            None => keys.values().find_map(|keys| keys.get(kid).cloned()),
        }
    }
}

/// `POST /emulator/clients/{id}/signing-keys`.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new().route("/emulator/clients/{id}/signing-keys", post(register))
}

#[derive(Deserialize)]
struct SigningKeyBody {
    kid: String,
    public_key_pem: String,
}

/// `POST /emulator/clients/{id}/signing-keys` with `{"kid": ..., "public_key_pem": ...}`.
async fn register(
    AxumState(state): AxumState<Arc<State>>,
    Path(client_id): Path<String>,
    Json(body): Json<SigningKeyBody>,
) -> Response {
    match PublicKey::from_pem(&body.public_key_pem) {
        Ok(key) => {
            state.signing_keys.register(&client_id, &body.kid, key);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": why.to_string() })),
        )
            .into_response(),
    }
}
