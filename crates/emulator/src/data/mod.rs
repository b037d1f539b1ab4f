//! TrueLayer's Data API v1 and its connections: one connection per consent given in the auth
//! dialog, the user tokens issued for it (access tokens, rotating refresh tokens), how
//! refreshes misbehave when told to, the Data API's routes (`api`) with their fake data
//! (`fake`), and the admin routes for all of it.
//!
//! The rules, as TrueLayer documents them (see the crate docs): a consent lasts
//! [`CONSENT_LIFETIME`] from its creation, a refresh token must be used within
//! [`REFRESH_TOKEN_LIFETIME`] of its issue, a refresh rotates both tokens and only the last
//! access token is valid. Whether TrueLayer revokes a connection whose spent refresh token is
//! presented again is not documented: the emulator does (reuse detection, on by default,
//! [`Emulator::set_refresh_reuse_detection`](crate::Emulator::set_refresh_reuse_detection)),
//! as code must assume the worst. Spent refresh tokens are kept for that until they are
//! [`REFRESH_TOKEN_LIFETIME`] old, then pruned (at most once an hour of the emulator's
//! clock): one presented after that is simply not valid.

mod api;
pub(crate) mod fake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::admin::{bad_request, parse};
use crate::auth::signing_key;
use crate::state::{State, lock};

pub(crate) use fake::provider;

/// The audience of Data API access tokens.
pub const DATA_AUDIENCE: &str = "data_api";

/// The Data API scopes the auth dialog accepts (`offline_access` asks for a refresh token).
pub const DATA_SCOPES: [&str; 8] = [
    "info",
    "accounts",
    "balance",
    "cards",
    "transactions",
    "direct_debits",
    "standing_orders",
    "offline_access",
];

/// How long a consent lasts from its creation (or its last extension): 90 days.
pub const CONSENT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long a refresh token may wait to be used after its issue: 30 days.
pub const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default `expires_in` of Data API access tokens: an hour, as TrueLayer's.
pub const DEFAULT_DATA_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The claims of a Data API access token (audience [`DATA_AUDIENCE`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataClaims {
    /// Issuer: the emulator's base URL.
    pub iss: String,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Audience: `data_api`.
    pub aud: String,
    /// The client the connection belongs to.
    pub client_id: String,
    /// Granted scopes.
    pub scope: Vec<String>,
    /// The connection (consent) the token is for.
    pub connection_id: String,
    /// The connection's credentials id, as `GET /data/v1/me` shows it.
    pub credentials_id: String,
    /// Token id: only the connection's latest one is valid.
    pub jti: String,
}

/// Why a connection was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevocationReason {
    /// [`Emulator::revoke_connection`](crate::Emulator::revoke_connection) or its admin route.
    Admin,
    /// A spent refresh token was presented again, with reuse detection on.
    RefreshTokenReuse,
    /// The code the connection was made with was presented again (RFC 6749 §4.1.2).
    CodeReuse,
    /// `DELETE /api/delete`.
    Deleted,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
#[non_exhaustive]
pub enum ConnectionStatus {
    /// Its tokens work and its refresh token can be used.
    Active,
    /// Its consent is past [`CONSENT_LIFETIME`] (or was expired by an admin): Data API calls
    /// get 403 `access_denied`, refreshes `invalid_grant`, and an extension answers
    /// `authentication_needed`, whose re-consent renews it.
    ConsentExpired,
    /// Revoked: no token of it works any more.
    Revoked(RevocationReason),
}

/// A connection (one consent in the auth dialog) as [`Emulator::connections`] lists it.
/// It holds no token.
///
/// [`Emulator::connections`]: crate::Emulator::connections
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection id (the `connection_id` claim of its access tokens).
    pub id: String,
    /// The client it belongs to.
    pub client_id: String,
    /// The provider chosen in the dialog, such as `mock`.
    pub provider_id: String,
    /// Its credentials id, random and stable.
    pub credentials_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When the consent was given (Unix seconds, emulator clock).
    pub created_at: i64,
    /// When the consent ends (Unix seconds, emulator clock).
    pub consent_expires_at: i64,
    /// Where it stands.
    pub status: ConnectionStatus,
    /// The generation of its current refresh token: 0 as issued with the code, one more
    /// for each refresh or extension served.
    pub refresh_generation: u64,
    /// Refreshes served (each rotated the tokens).
    pub refreshes_served: u64,
    /// Refreshes refused because they presented a spent refresh token.
    pub refreshes_refused_as_reuse: u64,
    /// Extensions served (`no_action_needed`).
    pub extensions_served: u64,
    /// Re-consents served: codes from an `authentication_needed` extension's link
    /// exchanged, each renewing this connection.
    pub reconsents_served: u64,
}

/// Counters of the Data API side of the emulator, over all connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DataStats {
    /// Authorization codes issued by the dialog.
    pub codes_issued: u64,
    /// Codes exchanged for tokens (a connection each).
    pub codes_exchanged: u64,
    /// Code exchanges refused (`invalid_grant`).
    pub codes_refused: u64,
    /// Refreshes served.
    pub refreshes_served: u64,
    /// Refreshes refused with `invalid_grant`, reuse included.
    pub refreshes_refused: u64,
    /// Refreshes refused because the refresh token was spent.
    pub refreshes_refused_as_reuse: u64,
    /// Refreshes answered with an injected failure, or whose answer was dropped.
    pub refresh_faults_served: u64,
    /// Extensions answered `no_action_needed`.
    pub extensions_served: u64,
    /// Data API requests.
    pub api_requests: u64,
    /// Data API requests refused for their token (401) or scope (403).
    pub api_rejections: u64,
}

/// What `POST /data/v1/connections/extend` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExtendAction {
    /// `no_action_needed`, with new tokens and a renewed consent (the default).
    #[default]
    NoActionNeeded,
    /// `authentication_needed`, with a `user_input_link` to the auth dialog; the tokens are
    /// left as they were.
    AuthenticationNeeded,
}

/// A token pair just issued.
pub(crate) struct Issued {
    pub(crate) access_token: String,
    pub(crate) refresh_token: Option<String>,
    pub(crate) expires_in: i64,
    pub(crate) scope: String,
}

impl Issued {
    /// The token endpoint's answer.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut body = json!({
            "access_token": self.access_token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
            "scope": self.scope,
        });
        if let Some(refresh) = &self.refresh_token {
            body["refresh_token"] = json!(refresh);
        }
        body
    }
}

/// What a code carried into its connection.
pub(crate) struct NewConnection {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) provider_id: String,
    /// The connection a re-consent renews: its pair is rotated and its consent renewed
    /// instead of a new connection being made.
    pub(crate) renews: Option<String>,
}

/// The connection a valid access token belongs to, as the Data API needs it.
pub(crate) struct Authorized {
    pub(crate) client_id: String,
    pub(crate) connection_id: String,
    pub(crate) credentials_id: String,
    pub(crate) provider_id: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) consent_expires_at: i64,
    /// Whether the consent has ended (only `/me` and `DELETE /api/delete` still answer).
    pub(crate) consent_expired: bool,
}

/// A refresh fault to serve instead of (or around) a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefreshFault {
    /// Answer this status, with `{"error": ...}` if given (an empty body otherwise),
    /// without touching the tokens.
    Fail { status: u16, error: Option<String> },
    /// Rotate the tokens, then close the connection without answering.
    DropAfterRotating,
}

/// Connections, their tokens, and how refreshes behave.
pub(crate) struct Data {
    issuer: String,
    inner: Mutex<Inner>,
}

struct Inner {
    connections: HashMap<String, Connection>,
    /// Every refresh token issued, spent ones included.
    refresh_tokens: HashMap<String, RefreshRecord>,
    next_seq: u64,
    lifetime: Option<i64>,
    reuse_detection: bool,
    extend_action: ExtendAction,
    /// Whether extend requires `client_id` and `client_secret` in its body.
    extend_client_auth: bool,
    /// When spent refresh tokens were last pruned (emulator clock).
    last_prune: i64,
    /// The delay before refresh answers, and for how many more (`None`: until cleared).
    refresh_delay: Option<(Duration, Option<u32>)>,
    /// Faults for the next refreshes, in order.
    refresh_faults: std::collections::VecDeque<RefreshFault>,
    stats: DataStats,
}

struct Connection {
    seq: u64,
    id: String,
    client_id: String,
    redirect_uri: String,
    provider_id: String,
    credentials_id: String,
    scopes: Vec<String>,
    created_at: i64,
    consent_expires_at: i64,
    revoked: Option<RevocationReason>,
    generation: u64,
    /// The jti of the only access token that is valid.
    access_jti: String,
    refreshes_served: u64,
    reuse_refusals: u64,
    extensions_served: u64,
    reconsents_served: u64,
}

struct RefreshRecord {
    connection_id: String,
    generation: u64,
    issued_at: i64,
}

/// Why a refresh token was refused: `invalid_grant`, with this description.
pub(crate) struct InvalidGrant(pub(crate) &'static str);

/// The description of a refusal because the consent has ended.
pub(crate) const CONSENT_EXPIRED: &str =
    "the consent has expired; the user must reconnect or extend the connection";

/// How often spent refresh tokens are pruned, at most (emulator clock): an hour.
const PRUNE_INTERVAL: i64 = 3600;

/// A random token of 32 bytes, hex, with a prefix.
pub(crate) fn random_token(prefix: &str) -> String {
    let mut s = String::from(prefix);
    for _ in 0..4 {
        s.push_str(&format!("{:016x}", fastrand::u64(..)));
    }
    s
}

impl Data {
    /// No connections yet; tokens issued by `issuer`.
    pub(crate) fn new(issuer: String) -> Self {
        Data {
            issuer,
            inner: Mutex::new(Inner {
                connections: HashMap::new(),
                refresh_tokens: HashMap::new(),
                next_seq: 1,
                lifetime: None,
                reuse_detection: true,
                extend_action: ExtendAction::default(),
                extend_client_auth: true,
                last_prune: i64::MIN,
                refresh_delay: None,
                refresh_faults: std::collections::VecDeque::new(),
                stats: DataStats::default(),
            }),
        }
    }

    /// Makes a connection from an exchanged code and issues its first tokens, or for a
    /// re-consent renews the connection it names: a new pair (the old one spent) and a new
    /// consent, the same id and credentials id. Returns the connection's id.
    pub(crate) fn create(
        &self,
        new: NewConnection,
        now: i64,
    ) -> Result<(String, Issued), InvalidGrant> {
        let mut inner = lock(&self.inner);
        if let Some(id) = new.renews {
            let connection = match inner.connections.get_mut(&id) {
                Some(c) if c.client_id != new.client_id => {
                    return Err(InvalidGrant(
                        "the connection to renew belongs to another client",
                    ));
                }
                Some(c) if c.revoked.is_some() => {
                    return Err(InvalidGrant("the connection to renew has been revoked"));
                }
                Some(c) => c,
                None => return Err(InvalidGrant("the connection to renew is unknown")),
            };
            connection.generation += 1;
            connection.consent_expires_at = now + CONSENT_LIFETIME.as_secs() as i64;
            connection.reconsents_served += 1;
            inner.stats.codes_exchanged += 1;
            let issued = self.issue(&mut inner, &id, now);
            return Ok((id, issued));
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let id = format!("conn-{seq}-{:08x}", fastrand::u32(..));
        let connection = Connection {
            seq,
            id: id.clone(),
            client_id: new.client_id,
            redirect_uri: new.redirect_uri,
            provider_id: new.provider_id,
            credentials_id: random_token("cred-")[..37].to_owned(),
            scopes: new.scopes,
            created_at: now,
            consent_expires_at: now + CONSENT_LIFETIME.as_secs() as i64,
            revoked: None,
            generation: 0,
            access_jti: String::new(),
            refreshes_served: 0,
            reuse_refusals: 0,
            extensions_served: 0,
            reconsents_served: 0,
        };
        inner.connections.insert(id.clone(), connection);
        inner.stats.codes_exchanged += 1;
        let issued = self.issue(&mut inner, &id, now);
        Ok((id, issued))
    }

    /// Forgets spent refresh tokens (and those of revoked connections) issued
    /// [`REFRESH_TOKEN_LIFETIME`] ago or more, at most once per [`PRUNE_INTERVAL`].
    fn prune(inner: &mut Inner, now: i64) {
        if now.saturating_sub(inner.last_prune) < PRUNE_INTERVAL {
            return;
        }
        inner.last_prune = now;
        let window = REFRESH_TOKEN_LIFETIME.as_secs() as i64;
        let connections = &inner.connections;
        inner.refresh_tokens.retain(|_, record| {
            let spent = connections
                .get(&record.connection_id)
                .is_none_or(|c| c.revoked.is_some() || record.generation < c.generation);
            !spent || record.issued_at + window > now
        });
    }

    /// New tokens for connection `id` at its current generation: the access token becomes
    /// the only valid one; a refresh token only with `offline_access`.
    fn issue(&self, inner: &mut Inner, id: &str, now: i64) -> Issued {
        let lifetime = inner
            .lifetime
            .unwrap_or(DEFAULT_DATA_TOKEN_LIFETIME.as_secs() as i64);
        let connection = inner
            .connections
            .get_mut(id)
            .unwrap_or_else(|| unreachable!("issue is called for a known connection"));
        let jti = random_token("")[..32].to_owned();
        let claims = DataClaims {
            iss: self.issuer.clone(),
            nbf: now,
            iat: now,
            exp: now + lifetime,
            aud: DATA_AUDIENCE.to_owned(),
            client_id: connection.client_id.clone(),
            scope: connection.scopes.clone(),
            connection_id: connection.id.clone(),
            credentials_id: connection.credentials_id.clone(),
            jti: jti.clone(),
        };
        connection.access_jti = jti;
        let access_token = signing_key().sign(&claims);
        let scope = connection.scopes.join(" ");
        let offline = connection.scopes.iter().any(|s| s == "offline_access");
        let generation = connection.generation;
        let refresh_token = offline.then(|| {
            Self::prune(inner, now);
            let token = random_token("rt-");
            inner.refresh_tokens.insert(
                token.clone(),
                RefreshRecord {
                    connection_id: id.to_owned(),
                    generation,
                    issued_at: now,
                },
            );
            token
        });
        Issued {
            access_token,
            refresh_token,
            expires_in: lifetime,
            scope,
        }
    }

    /// Checks a refresh token presented by `client_id` at `now`, and on success rotates the
    /// connection's tokens (for a refresh, or an extension when `extend`). A spent token
    /// revokes the connection when reuse detection is on.
    pub(crate) fn rotate(
        &self,
        client_id: Option<&str>,
        refresh_token: &str,
        now: i64,
        extend: bool,
    ) -> Result<Issued, InvalidGrant> {
        let mut inner = lock(&self.inner);
        let result = Self::check_refresh(&mut inner, client_id, refresh_token, now);
        let id = match result {
            Ok(id) => id,
            Err(why) => {
                inner.stats.refreshes_refused += 1;
                return Err(why);
            }
        };
        let connection = inner
            .connections
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("checked above"));
        connection.generation += 1;
        if extend {
            connection.extensions_served += 1;
            connection.consent_expires_at = now + CONSENT_LIFETIME.as_secs() as i64;
            inner.stats.extensions_served += 1;
        } else {
            connection.refreshes_served += 1;
            inner.stats.refreshes_served += 1;
        }
        Ok(self.issue(&mut inner, &id, now))
    }

    /// The connection a refresh token may rotate, or why not.
    fn check_refresh(
        inner: &mut Inner,
        client_id: Option<&str>,
        refresh_token: &str,
        now: i64,
    ) -> Result<String, InvalidGrant> {
        let Some(record) = inner.refresh_tokens.get(refresh_token) else {
            return Err(InvalidGrant("the refresh token is not valid"));
        };
        let (id, generation, issued_at) = (
            record.connection_id.clone(),
            record.generation,
            record.issued_at,
        );
        let reuse_detection = inner.reuse_detection;
        let connection = inner
            .connections
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("refresh tokens name known connections"));
        if client_id.is_some_and(|c| c != connection.client_id) {
            return Err(InvalidGrant(
                "the refresh token was issued to another client",
            ));
        }
        if connection.revoked.is_some() {
            return Err(InvalidGrant("the connection has been revoked"));
        }
        if generation < connection.generation {
            connection.reuse_refusals += 1;
            inner.stats.refreshes_refused_as_reuse += 1;
            if reuse_detection {
                connection.revoked = Some(RevocationReason::RefreshTokenReuse);
                return Err(InvalidGrant(
                    "the refresh token has already been used; the connection is revoked",
                ));
            }
            return Err(InvalidGrant("the refresh token has already been used"));
        }
        if now >= connection.consent_expires_at {
            return Err(InvalidGrant(CONSENT_EXPIRED));
        }
        if now >= issued_at + REFRESH_TOKEN_LIFETIME.as_secs() as i64 {
            return Err(InvalidGrant("the refresh token has expired"));
        }
        Ok(id)
    }

    /// Checks a refresh token presented by `client_id` (when known) for an extension without
    /// rotating (the `authentication_needed` answer): the connection's client, redirect URI,
    /// scopes and provider for a re-consent link that renews it, or why not.
    pub(crate) fn check_for_reconsent(
        &self,
        client_id: Option<&str>,
        refresh_token: &str,
        now: i64,
    ) -> Result<NewConnection, InvalidGrant> {
        let mut inner = lock(&self.inner);
        // Past the consent, re-consent is what is needed: only spent or revoked tokens, and
        // other clients' ones, fail.
        let id = match Self::check_refresh(&mut inner, client_id, refresh_token, now) {
            Ok(id) => id,
            Err(InvalidGrant(CONSENT_EXPIRED)) => inner
                .refresh_tokens
                .get(refresh_token)
                .map(|r| r.connection_id.clone())
                .unwrap_or_default(),
            Err(e) => return Err(e),
        };
        let connection = &inner.connections[&id];
        Ok(NewConnection {
            client_id: connection.client_id.clone(),
            redirect_uri: connection.redirect_uri.clone(),
            scopes: connection.scopes.clone(),
            provider_id: connection.provider_id.clone(),
            renews: Some(id),
        })
    }

    /// The connection a Data API access token's claims name, if the token is its latest and
    /// it is not revoked, with whether its consent has ended at `now`.
    pub(crate) fn authorize(
        &self,
        claims: &DataClaims,
        now: i64,
    ) -> Result<Authorized, &'static str> {
        let inner = lock(&self.inner);
        let Some(connection) = inner.connections.get(&claims.connection_id) else {
            return Err("unknown connection");
        };
        if connection.revoked.is_some() {
            return Err("the connection has been revoked");
        }
        if connection.access_jti != claims.jti {
            return Err("the access token has been superseded by a newer one");
        }
        Ok(Authorized {
            client_id: connection.client_id.clone(),
            connection_id: connection.id.clone(),
            credentials_id: connection.credentials_id.clone(),
            provider_id: connection.provider_id.clone(),
            scopes: connection.scopes.clone(),
            consent_expires_at: connection.consent_expires_at,
            consent_expired: now >= connection.consent_expires_at,
        })
    }

    /// Revokes connection `id`; false when there is none (or it was already revoked).
    pub(crate) fn revoke(&self, id: &str, reason: RevocationReason) -> bool {
        let mut inner = lock(&self.inner);
        match inner.connections.get_mut(id) {
            Some(c) if c.revoked.is_none() => {
                c.revoked = Some(reason);
                true
            }
            _ => false,
        }
    }

    /// Ends connection `id`'s consent now; false when there is no such connection.
    pub(crate) fn expire_consent(&self, id: &str, now: i64) -> bool {
        let mut inner = lock(&self.inner);
        match inner.connections.get_mut(id) {
            Some(c) => {
                c.consent_expires_at = c.consent_expires_at.min(now);
                true
            }
            None => false,
        }
    }

    /// Every connection, oldest first, as seen at `now`.
    pub(crate) fn list(&self, now: i64) -> Vec<ConnectionInfo> {
        let inner = lock(&self.inner);
        let mut list: Vec<&Connection> = inner.connections.values().collect();
        list.sort_by_key(|c| c.seq);
        list.into_iter()
            .map(|c| ConnectionInfo {
                id: c.id.clone(),
                client_id: c.client_id.clone(),
                provider_id: c.provider_id.clone(),
                credentials_id: c.credentials_id.clone(),
                scopes: c.scopes.clone(),
                created_at: c.created_at,
                consent_expires_at: c.consent_expires_at,
                status: match c.revoked {
                    Some(reason) => ConnectionStatus::Revoked(reason),
                    None if now >= c.consent_expires_at => ConnectionStatus::ConsentExpired,
                    None => ConnectionStatus::Active,
                },
                refresh_generation: c.generation,
                refreshes_served: c.refreshes_served,
                refreshes_refused_as_reuse: c.reuse_refusals,
                extensions_served: c.extensions_served,
                reconsents_served: c.reconsents_served,
            })
            .collect()
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> DataStats {
        lock(&self.inner).stats
    }

    /// Adds to the counters.
    pub(crate) fn count(&self, f: impl FnOnce(&mut DataStats)) {
        f(&mut lock(&self.inner).stats);
    }

    /// Sets the `expires_in` of new access tokens, or the default with `None`.
    pub(crate) fn set_lifetime(&self, secs: Option<i64>) {
        lock(&self.inner).lifetime = secs;
    }

    /// Turns reuse detection on or off.
    pub(crate) fn set_reuse_detection(&self, on: bool) {
        lock(&self.inner).reuse_detection = on;
    }

    /// Sets what extensions answer.
    pub(crate) fn set_extend_action(&self, action: ExtendAction) {
        lock(&self.inner).extend_action = action;
    }

    /// What extensions answer.
    pub(crate) fn extend_action(&self) -> ExtendAction {
        lock(&self.inner).extend_action
    }

    /// Whether extend requires the client's credentials.
    pub(crate) fn set_extend_client_auth(&self, required: bool) {
        lock(&self.inner).extend_client_auth = required;
    }

    /// Whether extend requires the client's credentials (on by default).
    pub(crate) fn extend_client_auth(&self) -> bool {
        lock(&self.inner).extend_client_auth
    }

    /// Delays refresh answers by `delay`, for the next `count` refreshes (`None`: until
    /// cleared).
    pub(crate) fn set_refresh_delay(&self, delay: Duration, count: Option<u32>) {
        lock(&self.inner).refresh_delay =
            (!delay.is_zero() && count != Some(0)).then_some((delay, count));
    }

    /// Queues faults for the next refreshes.
    pub(crate) fn queue_refresh_faults(&self, faults: impl IntoIterator<Item = RefreshFault>) {
        lock(&self.inner).refresh_faults.extend(faults);
    }

    /// Removes refresh delays and faults.
    pub(crate) fn clear_refresh_faults(&self) {
        let mut inner = lock(&self.inner);
        inner.refresh_delay = None;
        inner.refresh_faults.clear();
    }

    /// What this refresh request gets: the delay before it, and the fault, if any.
    pub(crate) fn next_refresh_faults(&self) -> (Duration, Option<RefreshFault>) {
        let mut inner = lock(&self.inner);
        let delay = match &mut inner.refresh_delay {
            Some((delay, count)) => {
                let delay = *delay;
                if let Some(n) = count {
                    *n -= 1;
                    if *n == 0 {
                        inner.refresh_delay = None;
                    }
                }
                delay
            }
            None => Duration::ZERO,
        };
        let fault = inner.refresh_faults.pop_front();
        if fault.is_some() {
            inner.stats.refresh_faults_served += 1;
        }
        (delay, fault)
    }
}

/// The Data API, extend and delete, and the admin routes for connections and refreshes.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .merge(api::routes())
        .route("/emulator/connections", get(list_connections))
        .route("/emulator/connections/{id}/revoke", post(revoke_connection))
        .route(
            "/emulator/connections/{id}/expire-consent",
            post(expire_consent),
        )
        .route("/emulator/data-token-lifetime", post(data_token_lifetime))
        .route("/emulator/refresh-reuse-detection", post(reuse_detection))
        .route("/emulator/refresh-delay", post(refresh_delay))
        .route("/emulator/refresh-failures", post(refresh_failures))
        .route("/emulator/refresh-drops", post(refresh_drops))
        .route("/emulator/refresh-faults", delete(clear_refresh_faults))
        .route("/emulator/extend-action", post(extend_action))
        .route("/emulator/data-stats", get(data_stats))
}

/// `GET /emulator/connections`: `{"connections": [...]}`, oldest first.
async fn list_connections(AxumState(state): AxumState<Arc<State>>) -> Response {
    let list = state.data.list(state.clock.now_unix());
    Json(json!({ "connections": list })).into_response()
}

fn unknown_connection() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "unknown connection" })),
    )
        .into_response()
}

/// `POST /emulator/connections/{id}/revoke`.
async fn revoke_connection(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
) -> Response {
    if state.data.revoke(&id, RevocationReason::Admin) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        unknown_connection()
    }
}

/// `POST /emulator/connections/{id}/expire-consent`.
async fn expire_consent(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
) -> Response {
    if state.data.expire_consent(&id, state.clock.now_unix()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        unknown_connection()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecondsBody {
    seconds: Option<i64>,
}

/// `POST /emulator/data-token-lifetime` with `{"seconds": N}`, or `null` for the default.
async fn data_token_lifetime(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<SecondsBody>(&body) {
        Ok(body) => {
            state.data.set_lifetime(body.seconds);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnabledBody {
    enabled: bool,
}

/// `POST /emulator/refresh-reuse-detection` with `{"enabled": bool}`.
async fn reuse_detection(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<EnabledBody>(&body) {
        Ok(body) => {
            state.data.set_reuse_detection(body.enabled);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayBody {
    millis: u64,
    #[serde(default)]
    count: Option<u32>,
}

/// `POST /emulator/refresh-delay` with `{"millis": N, "count": N | null}` (`null`: until
/// cleared; `millis` 0 clears).
async fn refresh_delay(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<DelayBody>(&body) {
        Ok(body) => {
            state
                .data
                .set_refresh_delay(Duration::from_millis(body.millis), body.count);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailuresBody {
    count: u32,
    status: u16,
    #[serde(default)]
    error: Option<String>,
}

/// `POST /emulator/refresh-failures` with `{"count": N, "status": 400, "error":
/// "invalid_grant"}` (without `error`, an empty body).
async fn refresh_failures(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<FailuresBody>(&body) {
        Ok(body) if StatusCode::from_u16(body.status).is_ok() && body.status >= 400 => {
            let fault = RefreshFault::Fail {
                status: body.status,
                error: body.error,
            };
            state
                .data
                .queue_refresh_faults(std::iter::repeat_n(fault, body.count as usize));
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => bad_request("status must be an HTTP error status (400-599)"),
        Err(why) => bad_request(why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountBody {
    count: u32,
}

/// `POST /emulator/refresh-drops` with `{"count": N}`: the next N refreshes rotate the tokens,
/// then close the connection unanswered.
async fn refresh_drops(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<CountBody>(&body) {
        Ok(body) => {
            state.data.queue_refresh_faults(std::iter::repeat_n(
                RefreshFault::DropAfterRotating,
                body.count as usize,
            ));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

/// `DELETE /emulator/refresh-faults`: no more refresh delays, failures or drops.
async fn clear_refresh_faults(AxumState(state): AxumState<Arc<State>>) -> Response {
    state.data.clear_refresh_faults();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    #[serde(default)]
    action_needed: Option<ExtendAction>,
    #[serde(default)]
    client_authentication: Option<bool>,
}

/// `POST /emulator/extend-action` with `{"action_needed": "no_action_needed" |
/// "authentication_needed"}` and/or `{"client_authentication": bool}`.
async fn extend_action(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<ExtendBody>(&body) {
        Ok(ExtendBody {
            action_needed: None,
            client_authentication: None,
        }) => bad_request("send action_needed, client_authentication, or both"),
        Ok(body) => {
            if let Some(action) = body.action_needed {
                state.data.set_extend_action(action);
            }
            if let Some(required) = body.client_authentication {
                state.data.set_extend_client_auth(required);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

/// `GET /emulator/data-stats`: [`DataStats`].
async fn data_stats(AxumState(state): AxumState<Arc<State>>) -> Response {
    Json(state.data.stats()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;

    #[test]
    fn spent_refresh_tokens_past_the_window_are_pruned() {
        let data = Data::new("http://127.0.0.1:1".to_owned());
        let new = NewConnection {
            client_id: "c".to_owned(),
            redirect_uri: "https://app.example/cb".to_owned(),
            scopes: vec!["accounts".to_owned(), "offline_access".to_owned()],
            provider_id: "mock".to_owned(),
            renews: None,
        };
        let t0 = 1_700_000_000;
        let (_, issued) = data.create(new, t0).ok().unwrap();
        let mut token = issued.refresh_token.unwrap();
        for at in [t0 + 1, t0 + 29 * DAY, t0 + 58 * DAY] {
            let issued = data.rotate(Some("c"), &token, at, false).ok().unwrap();
            token = issued.refresh_token.unwrap();
        }
        // Issued at t0 and t0 + 1, spent, and past 30 days: gone. The one issued at 29 days
        // (spent, 29 days old) and the current one stay.
        assert_eq!(lock(&data.inner).refresh_tokens.len(), 2);
    }
}
