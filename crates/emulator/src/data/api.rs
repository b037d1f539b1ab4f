//! The Data API v1 routes under `/data/v1` (the connection's latest access token as bearer),
//! `POST /data/v1/connections/extend` (a refresh token, no bearer) and `DELETE /api/delete`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::fake::{Bank, default_from, provider_json};
use super::{
    Authorized, CONSENT_EXPIRED, DATA_AUDIENCE, DataClaims, ExtendAction, RevocationReason,
};
use crate::auth::dialog::{RECONSENT_LINK_LIFETIME, Reconsent, redirect_allowed};
use crate::auth::{KEY_ID, signing_key};
use crate::state::State;

/// The Data API, extend, and delete.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/data/v1/me", get(me))
        .route("/data/v1/info", get(info))
        .route("/data/v1/accounts", get(|s, h| list(s, h, Kind::Account)))
        .route("/data/v1/cards", get(|s, h| list(s, h, Kind::Card)))
        .route(
            "/data/v1/accounts/{id}",
            get(|s, h, p| item(s, h, p, Kind::Account, Sub::Itself)),
        )
        .route(
            "/data/v1/cards/{id}",
            get(|s, h, p| item(s, h, p, Kind::Card, Sub::Itself)),
        )
        .route(
            "/data/v1/accounts/{id}/balance",
            get(|s, h, p| item(s, h, p, Kind::Account, Sub::Balance)),
        )
        .route(
            "/data/v1/cards/{id}/balance",
            get(|s, h, p| item(s, h, p, Kind::Card, Sub::Balance)),
        )
        .route(
            "/data/v1/accounts/{id}/transactions",
            get(|s, h, p, q| transactions(s, h, p, q, Kind::Account)),
        )
        .route(
            "/data/v1/cards/{id}/transactions",
            get(|s, h, p, q| transactions(s, h, p, q, Kind::Card)),
        )
        .route(
            "/data/v1/accounts/{id}/transactions/pending",
            get(|s, h, p| item(s, h, p, Kind::Account, Sub::Pending)),
        )
        .route(
            "/data/v1/cards/{id}/transactions/pending",
            get(|s, h, p| item(s, h, p, Kind::Card, Sub::Pending)),
        )
        .route(
            "/data/v1/accounts/{id}/direct_debits",
            get(|s, h, p| item(s, h, p, Kind::Account, Sub::DirectDebits)),
        )
        .route(
            "/data/v1/accounts/{id}/standing_orders",
            get(|s, h, p| item(s, h, p, Kind::Account, Sub::StandingOrders)),
        )
        .route("/data/v1/connections/extend", post(extend))
        .route("/api/delete", delete(delete_connection))
}

type St = AxumState<Arc<State>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Account,
    Card,
}

impl Kind {
    fn scope(self) -> &'static str {
        match self {
            Kind::Account => "accounts",
            Kind::Card => "cards",
        }
    }
}

#[derive(Clone, Copy)]
enum Sub {
    Itself,
    Balance,
    Pending,
    DirectDebits,
    StandingOrders,
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

fn results(results: Vec<Value>) -> Response {
    Json(json!({ "results": results, "status": "Succeeded" })).into_response()
}

/// A 401 with `WWW-Authenticate: Bearer`: the token is missing, invalid, expired,
/// superseded or revoked.
fn unauthorized(state: &State, why: &str) -> Response {
    state.data.count(|s| s.api_rejections += 1);
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", why);
    let challenge = if why == "no bearer token" {
        "Bearer".to_owned()
    } else {
        format!("Bearer error=\"invalid_token\", error_description=\"{why}\"")
    };
    if let Ok(value) = challenge.parse() {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Verifies a Data API access token's signature, audience, issuer and expiry.
fn verify(state: &State, token: &str, now: i64) -> Result<DataClaims, &'static str> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "the token is not a JWT")?;
    if header.kid.as_deref() != Some(KEY_ID) {
        return Err("unknown signing key");
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    validation.set_audience(&[DATA_AUDIENCE]);
    validation.set_issuer(&[state.auth.issuer()]);
    let claims = jsonwebtoken::decode::<DataClaims>(token, &signing_key().decoding, &validation)
        .map_err(|_| "the signature or claims are invalid")?
        .claims;
    if claims.exp <= now {
        return Err("the access token has expired");
    }
    Ok(claims)
}

/// The connection behind the request's bearer token, with `scopes` granted, or the 401 or
/// 403 answer. Once the consent has ended, only `/me` and `DELETE /api/delete` answer
/// (`any_consent`); the rest is a 403 `access_denied`, TrueLayer's answer that calls for
/// the user (reconnect, or extend), as a 401 would call for a refresh that cannot help.
fn authenticate(
    state: &State,
    headers: &HeaderMap,
    scopes: &[&str],
) -> Result<Authorized, Box<Response>> {
    authenticate_with(state, headers, scopes, false)
}

fn authenticate_with(
    state: &State,
    headers: &HeaderMap,
    scopes: &[&str],
    any_consent: bool,
) -> Result<Authorized, Box<Response>> {
    state.data.count(|s| s.api_requests += 1);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(Box::new(unauthorized(state, "no bearer token")));
    };
    let now = state.clock.now_unix();
    let claims = verify(state, token, now).map_err(|why| Box::new(unauthorized(state, why)))?;
    let connection = state
        .data
        .authorize(&claims, now)
        .map_err(|why| Box::new(unauthorized(state, why)))?;
    if connection.consent_expired && !any_consent {
        state.data.count(|s| s.api_rejections += 1);
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the consent has expired; the user must reconfirm it (extend the connection) or reconnect",
        )));
    }
    if let Some(missing) = scopes
        .iter()
        .find(|s| !connection.scopes.iter().any(|g| g == *s))
    {
        state.data.count(|s| s.api_rejections += 1);
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "access_denied",
            &format!("the connection was not granted the {missing} scope"),
        )));
    }
    Ok(connection)
}

fn bank<'a>(state: &State, connection: &'a Authorized) -> Bank<'a> {
    Bank {
        credentials_id: &connection.credentials_id,
        provider_id: &connection.provider_id,
        now: state.clock.now_unix(),
    }
}

/// `GET /data/v1/me`: answers past the consent too, with `consent_status` `Expired`.
async fn me(AxumState(state): St, headers: HeaderMap) -> Response {
    let c = match authenticate_with(&state, &headers, &[], true) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let consent_status = if c.consent_expired {
        "Expired"
    } else {
        "Authorised"
    };
    results(vec![json!({
        "client_id": c.client_id,
        "credentials_id": c.credentials_id,
        "consent_status": consent_status,
        "consent_expires_at": crate::clock::rfc3339(c.consent_expires_at),
        "provider": provider_json(&c.provider_id),
        "scopes": c.scopes,
    })])
}

/// `GET /data/v1/info`.
async fn info(AxumState(state): St, headers: HeaderMap) -> Response {
    match authenticate(&state, &headers, &["info"]) {
        Ok(c) => results(vec![bank(&state, &c).info()]),
        Err(r) => *r,
    }
}

fn all(bank: &Bank<'_>, kind: Kind) -> Vec<Value> {
    match kind {
        Kind::Account => bank.accounts(),
        Kind::Card => bank.cards(),
    }
}

/// `GET /data/v1/accounts` and `/cards`.
async fn list(AxumState(state): St, headers: HeaderMap, kind: Kind) -> Response {
    match authenticate(&state, &headers, &[kind.scope()]) {
        Ok(c) => results(all(&bank(&state, &c), kind)),
        Err(r) => *r,
    }
}

/// The account or card `id` of the connection, or the 404 answer.
fn find(bank: &Bank<'_>, kind: Kind, id: &str) -> Result<Value, Box<Response>> {
    all(bank, kind)
        .into_iter()
        .find(|a| a["account_id"] == id)
        .ok_or_else(|| {
            let what = match kind {
                Kind::Account => "account",
                Kind::Card => "card",
            };
            Box::new(error(
                StatusCode::NOT_FOUND,
                &format!("{what}_not_found"),
                &format!("no {what} with this id"),
            ))
        })
}

/// `GET /data/v1/{accounts|cards}/{id}[/balance|/transactions/pending|/direct_debits|
/// /standing_orders]`.
async fn item(
    AxumState(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    kind: Kind,
    sub: Sub,
) -> Response {
    let scopes: &[&str] = match sub {
        Sub::Itself => &[kind.scope()],
        Sub::Balance => &[kind.scope(), "balance"],
        Sub::Pending => &[kind.scope(), "transactions"],
        Sub::DirectDebits => &[kind.scope(), "direct_debits"],
        Sub::StandingOrders => &[kind.scope(), "standing_orders"],
    };
    let connection = match authenticate(&state, &headers, scopes) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let bank = bank(&state, &connection);
    let found = match find(&bank, kind, &id) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    match (sub, kind) {
        (Sub::Itself, _) => results(vec![found]),
        (Sub::Balance, Kind::Account) => results(vec![bank.account_balance(&id)]),
        (Sub::Balance, Kind::Card) => results(vec![bank.card_balance(&id)]),
        (Sub::Pending, _) => results(bank.pending(&id)),
        (Sub::DirectDebits, _) => results(bank.direct_debits(&id)),
        (Sub::StandingOrders, _) => results(bank.standing_orders(&id)),
    }
}

#[derive(Deserialize)]
struct Range {
    from: Option<String>,
    to: Option<String>,
}

/// `YYYY-MM-DD`.
fn parse_date(text: &str) -> Option<Date> {
    Date::parse(text, format_description!("[year]-[month]-[day]")).ok()
}

/// `GET /data/v1/{accounts|cards}/{id}/transactions?from=YYYY-MM-DD&to=YYYY-MM-DD`: both
/// optional (the last 90 days by default); a bad date or `from` after `to` is a 400.
async fn transactions(
    AxumState(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(range): Query<Range>,
    kind: Kind,
) -> Response {
    let connection = match authenticate(&state, &headers, &[kind.scope(), "transactions"]) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let bank = bank(&state, &connection);
    if let Err(r) = find(&bank, kind, &id) {
        return *r;
    }
    let bad = |why: &str| error(StatusCode::BAD_REQUEST, "invalid_date_range", why);
    let today = OffsetDateTime::from_unix_timestamp(bank.now)
        .map(|t| t.date())
        .unwrap_or(Date::MIN);
    let to = match range.to.as_deref() {
        None => today,
        Some(text) => match parse_date(text) {
            Some(d) => d,
            None => return bad("to must be a date, YYYY-MM-DD"),
        },
    };
    let from = match range.from.as_deref() {
        None => default_from(to),
        Some(text) => match parse_date(text) {
            Some(d) => d,
            None => return bad("from must be a date, YYYY-MM-DD"),
        },
    };
    if from > to {
        return bad("from is after to");
    }
    if (to - from).whole_days() > 3660 {
        return bad("the range is longer than ten years");
    }
    results(bank.transactions(&id, from, to))
}

#[derive(Deserialize)]
struct ExtendBody {
    refresh_token: String,
    user_has_reconfirmed_consent: bool,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
}

/// `POST /data/v1/connections/extend`: `no_action_needed` with new tokens and a renewed
/// consent, or `authentication_needed` with a re-consent link to the dialog (the emulator's
/// extend action, when the user has not reconfirmed their consent, or when the consent has
/// already ended: TrueLayer says the user must then authenticate again). The link sends the
/// code to the body's `redirect_uri` when given (it must be allowed for the client, 400
/// `invalid_request` otherwise), else to the connection's own; exchanging that code renews
/// this connection. With client authentication on (the default), the body must carry the
/// connection's `client_id` and its `client_secret` (401 `invalid_client` otherwise).
async fn extend(AxumState(state): St, body: Bytes) -> Response {
    let body: ExtendBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send {\"refresh_token\": ..., \"user_has_reconfirmed_consent\": true, \"client_id\": ..., \"client_secret\": ...}",
            );
        }
    };
    let client_id = body.client_id.as_deref().filter(|id| !id.is_empty());
    let required = state.data.extend_client_auth();
    let client_ok = match client_id {
        Some(id) => state
            .auth
            .authenticate(id, body.client_secret.as_deref().unwrap_or("")),
        // Client credentials are then optional here; when sent they must be right.
        None => !required,
    };
    if !client_ok {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            if client_id.is_none() {
                "client_id and client_secret are required"
            } else {
                "client authentication failed"
            },
        );
    }
    let now = state.clock.now_unix();
    let invalid_grant = |why: &str| error(StatusCode::BAD_REQUEST, "invalid_grant", why);
    if body.user_has_reconfirmed_consent
        && state.data.extend_action() == ExtendAction::NoActionNeeded
    {
        match state.data.rotate(client_id, &body.refresh_token, now, true) {
            Ok(issued) => {
                let mut answer = issued.to_json();
                answer["action_needed"] = json!("no_action_needed");
                return ([(header::CACHE_CONTROL, "no-store")], Json(answer)).into_response();
            }
            // The consent has ended: the user must authenticate again.
            Err(why) if why.0 == CONSENT_EXPIRED => {}
            Err(why) => return invalid_grant(why.0),
        }
    }
    let connection = match state
        .data
        .check_for_reconsent(client_id, &body.refresh_token, now)
    {
        Ok(connection) => connection,
        Err(why) => return invalid_grant(why.0),
    };
    let redirect_uri = match body.redirect_uri {
        Some(uri) if !redirect_allowed(&state, &connection.client_id, &uri) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the redirect_uri is not allowed for this client",
            );
        }
        Some(uri) => uri,
        None => connection.redirect_uri,
    };
    let scope = connection.scopes.join(" ");
    let reconsent = state.dialog.add_reconsent(
        Reconsent {
            connection_id: connection.renews.unwrap_or_default(),
            client_id: connection.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            scopes: connection.scopes,
            provider_id: connection.provider_id.clone(),
            expires_at: now + RECONSENT_LINK_LIFETIME.as_secs() as i64,
        },
        now,
    );
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", &connection.client_id),
        ("redirect_uri", &redirect_uri),
        ("scope", &scope),
        ("provider_id", &connection.provider_id),
        ("reconsent", &reconsent),
    ])
    .unwrap_or_default();
    Json(json!({
        "action_needed": "authentication_needed",
        "user_input_link": format!("{}/?{query}", state.auth.issuer()),
    }))
    .into_response()
}

/// `DELETE /api/delete` with the connection's access token (past the consent too): revokes
/// the connection (200).
async fn delete_connection(AxumState(state): St, headers: HeaderMap) -> Response {
    match authenticate_with(&state, &headers, &[], true) {
        Ok(c) => {
            state
                .data
                .revoke(&c.connection_id, RevocationReason::Deleted);
            StatusCode::OK.into_response()
        }
        Err(r) => *r,
    }
}
