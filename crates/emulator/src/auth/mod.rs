//! Clients and their tokens: `POST /connect/token`, the JWKS tokens verify against, token
//! verification and revocation for the APIs, and the admin routes for lifetimes, secrets and
//! revocation; the Data API's auth dialog and its codes (`dialog`), and the two user grants
//! (`user_grants`).

pub(crate) mod dialog;
mod keys;
mod token_endpoint;
mod user_grants;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub(crate) use keys::signing_key;
pub use keys::{AUDIENCE, Claims, KEY_ID};

use crate::error::Error;
use crate::state::{State, lock};

/// The default token lifetime, as TrueLayer issues today.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Every scope TrueLayer documents for the Payments API, legacy ones included.
pub const KNOWN_SCOPES: [&str; 6] = [
    "payments",
    "recurring_payments:sweeping",
    "recurring_payments:commercial",
    "signupplus",
    "payouts",
    "paydirect",
];

/// A client as TrueLayer Console knows it. No `Debug`: it holds the secret.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) secret: String,
    pub(crate) allowed_scopes: HashSet<String>,
    /// The redirect URIs the auth dialog accepts for this client, as allow-listed in
    /// Console (loopback ones may be allowed as well: see `Dialog`).
    pub(crate) redirect_uris: HashSet<String>,
}

/// The outcome of a `client_credentials` grant.
pub(crate) enum Authorization {
    Granted { scopes: Vec<String> },
    InvalidClient,
    InvalidScope(String),
}

/// The clients, and what is known about the tokens issued to them.
pub(crate) struct Auth {
    /// The `iss` of every token: the emulator's base URL.
    issuer: String,
    clients: Mutex<HashMap<String, Client>>,
    /// The `expires_in` of new tokens, when not [`DEFAULT_LIFETIME`].
    lifetime: Mutex<Option<i64>>,
    /// The issue number of the next token, the first 16 hex digits of its `jti`.
    next_seq: AtomicU64,
    /// Tokens numbered below this are revoked.
    revoked_below_seq: AtomicU64,
    revoked_jtis: Mutex<HashSet<String>>,
}

impl Auth {
    /// No clients yet; tokens issued by `issuer`.
    pub(crate) fn new(issuer: String) -> Self {
        Auth {
            issuer,
            clients: Mutex::default(),
            lifetime: Mutex::default(),
            next_seq: AtomicU64::new(1),
            revoked_below_seq: AtomicU64::new(0),
            revoked_jtis: Mutex::default(),
        }
    }

    /// Adds (or replaces) a client.
    pub(crate) fn add_client(&self, id: String, client: Client) {
        lock(&self.clients).insert(id, client);
    }

    /// Sets a client's secret; returns whether the client exists.
    pub(crate) fn set_secret(&self, id: &str, secret: String) -> bool {
        match lock(&self.clients).get_mut(id) {
            Some(c) => {
                c.secret = secret;
                true
            }
            None => false,
        }
    }

    /// Whether `id` is a known client.
    pub(crate) fn has_client(&self, id: &str) -> bool {
        lock(&self.clients).contains_key(id)
    }

    /// Whether `secret` is client `id`'s secret.
    pub(crate) fn authenticate(&self, id: &str, secret: &str) -> bool {
        lock(&self.clients)
            .get(id)
            .is_some_and(|c| constant_time_eq(c.secret.as_bytes(), secret.as_bytes()))
    }

    /// Adds `uri` to client `id`'s redirect allow-list; false for an unknown client.
    pub(crate) fn allow_redirect_uri(&self, id: &str, uri: &str) -> bool {
        match lock(&self.clients).get_mut(id) {
            Some(c) => {
                c.redirect_uris.insert(uri.to_owned());
                true
            }
            None => false,
        }
    }

    /// Whether `uri` is on client `id`'s redirect allow-list, exactly.
    pub(crate) fn redirect_uri_listed(&self, id: &str, uri: &str) -> bool {
        lock(&self.clients)
            .get(id)
            .is_some_and(|c| c.redirect_uris.contains(uri))
    }

    /// The issuer of every token, the emulator's base URL.
    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Checks a client's credentials and the scopes it asks for (space-separated).
    pub(crate) fn authorize(&self, id: &str, secret: &str, requested: &str) -> Authorization {
        let clients = lock(&self.clients);
        let Some(client) = clients.get(id) else {
            return Authorization::InvalidClient;
        };
        if !constant_time_eq(client.secret.as_bytes(), secret.as_bytes()) {
            return Authorization::InvalidClient;
        }
        let mut scopes: Vec<String> = Vec::new();
        for scope in requested.split(' ').filter(|s| !s.is_empty()) {
            if !client.allowed_scopes.contains(scope) {
                return Authorization::InvalidScope(scope.to_owned());
            }
            if !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
        Authorization::Granted { scopes }
    }

    /// The `expires_in` of new tokens, in seconds.
    pub(crate) fn lifetime_secs(&self) -> i64 {
        lock(&self.lifetime).unwrap_or(DEFAULT_LIFETIME.as_secs() as i64)
    }

    /// Sets the `expires_in` of new tokens, or the default with `None`.
    pub(crate) fn set_lifetime(&self, secs: Option<i64>) {
        *lock(&self.lifetime) = secs;
    }

    /// A token for `client_id` with `scopes`, issued at `now` (Unix seconds) for `lifetime`
    /// seconds.
    pub(crate) fn issue(
        &self,
        client_id: &str,
        scopes: Vec<String>,
        lifetime: i64,
        now: i64,
    ) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let claims = Claims {
            iss: self.issuer.clone(),
            nbf: now,
            iat: now,
            exp: now + lifetime,
            aud: AUDIENCE.to_owned(),
            scope: scopes,
            client_id: client_id.to_owned(),
            jti: format!("{seq:016X}{:016X}", fastrand::u64(..)),
        };
        signing_key().sign(&claims)
    }

    /// Verifies a bearer token at `now` (Unix seconds) as a resource server would: its
    /// signature, audience, issuer, times, revocation and the `payments` scope.
    pub(crate) fn verify(&self, token: &str, now: i64) -> Result<Claims, Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::TokenNotJwt)?;
        if header.kid.as_deref() != Some(KEY_ID) {
            return Err(Error::TokenUnknownKey);
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[&self.issuer]);
        let data = jsonwebtoken::decode::<Claims>(token, &signing_key().decoding, &validation)
            .map_err(|_| Error::TokenInvalid)?;
        let claims = data.claims;
        if claims.exp <= now {
            return Err(Error::TokenExpired);
        }
        if claims.nbf > now {
            return Err(Error::TokenNotYetValid);
        }
        let seq = u64::from_str_radix(claims.jti.get(..16).unwrap_or(""), 16).unwrap_or(0);
        if seq < self.revoked_below_seq.load(Ordering::Relaxed)
            || lock(&self.revoked_jtis).contains(&claims.jti)
        {
            return Err(Error::TokenRevoked);
        }
        if !claims.scope.iter().any(|s| s == "payments") {
            return Err(Error::TokenLacksScope);
        }
        Ok(claims)
    }

    /// Revokes every token issued so far.
    pub(crate) fn revoke_all(&self) {
        self.revoked_below_seq
            .store(self.next_seq.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Revokes one token; false when it is not a token this emulator could have issued.
    pub(crate) fn revoke(&self, token: &str) -> bool {
        // Revocation needs the jti only; the signature is not checked so any issued token can be named.
        let claims = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Claims>(&b).ok());
        match claims {
            Some(c) => lock(&self.revoked_jtis).insert(c.jti),
            None => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random secret for a new or rotated client.
pub(crate) fn random_secret() -> String {
    let mut s = String::from("emu-");
    for _ in 0..4 {
        s.push_str(&format!("{:016x}", fastrand::u64(..)));
    }
    s
}

/// `POST /connect/token`, the token JWKS, and the admin routes for lifetimes, secrets and
/// revocation.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/connect/token", post(token_endpoint::token))
        .route("/connect/token/", post(token_endpoint::token))
        .route(
            "/.well-known/jwks.json",
            get(|| async { Json(signing_key().jwks()) }),
        )
        .route("/emulator/token-lifetime", post(lifetime))
        .route("/emulator/clients/{id}/rotate", post(rotate))
        .route("/emulator/revoke", post(revoke))
        .route(
            "/emulator/clients/{id}/redirect-uris",
            post(dialog::allow_redirect_uri_route),
        )
        .merge(dialog::routes())
}

#[derive(Deserialize)]
struct LifetimeBody {
    seconds: Option<i64>,
}

/// `POST /emulator/token-lifetime` with `{"seconds": N}`, or `null` for the default.
async fn lifetime(
    AxumState(state): AxumState<Arc<State>>,
    Json(body): Json<LifetimeBody>,
) -> Response {
    state.auth.set_lifetime(body.seconds);
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /emulator/clients/{id}/rotate`: a new secret for the client, in the answer.
async fn rotate(
    AxumState(state): AxumState<Arc<State>>,
    Path(client_id): Path<String>,
) -> Response {
    let secret = random_secret();
    if state.auth.set_secret(&client_id, secret.clone()) {
        Json(json!({ "client_id": client_id, "client_secret": secret })).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "unknown client" })),
        )
            .into_response()
    }
}

/// `POST /emulator/revoke`: revokes every token issued so far.
async fn revoke(AxumState(state): AxumState<Arc<State>>) -> Response {
    state.auth.revoke_all();
    StatusCode::NO_CONTENT.into_response()
}
