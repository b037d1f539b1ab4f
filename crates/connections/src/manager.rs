//! The manager: connects users, hands out their access tokens, extends and deletes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use quick_cache::sync::Cache;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tracing::{info, warn};
use truelayer_auth::{
    AccessToken, AuthorizationCode, CacheSettings, ClientCredentials, CredentialsSource,
    Environment, Error as TokenError, Refresher, TokenClient, TokenFuture, TokenSource, UserTokens,
};

use crate::error::ConnectionError;
use crate::refresh::{self, ConnectionRefresh, Unsaved, Written};
use crate::store::ConnectionLock;
use crate::store::{ConnectionId, ConnectionRecord, ConnectionStatus, ConnectionStore};

/// How long consent lasts from the moment the user gives it (TrueLayer: 90 days).
pub const CONSENT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// What every connection's refresher shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn ConnectionStore>,
    pub(crate) environment: Environment,
    pub(crate) source: Arc<dyn CredentialsSource>,
    pub(crate) client: TokenClient,
    pub(crate) http: reqwest::Client,
    pub(crate) lock_wait: Duration,
    pub(crate) credentials_timeout: Duration,
    /// Refreshed pairs not yet written, by connection: see `refresh::Unsaved`.
    pub(crate) unsaved: Mutex<HashMap<ConnectionId, Unsaved>>,
}

impl Shared {
    /// Whether a refreshed pair of `id` waits to be written: `Some(true)` while its writer
    /// works on it, `Some(false)` when its writer is gone (another attempt takes over).
    pub(crate) fn unsaved_state(&self, id: &ConnectionId) -> Option<bool> {
        self.unsaved
            .lock()
            .expect("not poisoned")
            .get(id)
            .map(Unsaved::is_being_written)
    }

    pub(crate) fn unsaved_pair(
        &self,
        id: &ConnectionId,
    ) -> Option<(ConnectionRecord, SecretString)> {
        self.unsaved
            .lock()
            .expect("not poisoned")
            .get(id)
            .map(Unsaved::pair)
    }

    pub(crate) fn set_unsaved_version(&self, id: &ConnectionId, version: u64) {
        if let Some(u) = self.unsaved.lock().expect("not poisoned").get_mut(id) {
            u.set_version(version);
        }
    }

    pub(crate) fn forget_unsaved(&self, id: &ConnectionId) {
        self.unsaved.lock().expect("not poisoned").remove(id);
    }

    /// Starts the task that writes `id`'s refreshed pair (`pair`, or the one already kept)
    /// under `lock` until it is written. It runs on its own, so a caller or an engine that
    /// stops waiting cannot cancel the write.
    pub(crate) fn spawn_writer(
        self: &Arc<Self>,
        id: &ConnectionId,
        lock: Box<dyn ConnectionLock>,
        pair: Option<(ConnectionRecord, SecretString)>,
    ) -> tokio::task::JoinHandle<Result<Written, ConnectionError>> {
        let writing = {
            let mut unsaved = self.unsaved.lock().expect("not poisoned");
            if let Some((next, spent)) = pair {
                unsaved.insert(id.clone(), Unsaved::new(next, spent));
            }
            unsaved.get(id).map(Unsaved::start_writing)
        };
        let (shared, id) = (Arc::clone(self), id.clone());
        tokio::spawn(async move {
            let _done = writing.map(WritingFlag);
            refresh::write_until_done(shared, id, lock).await
        })
    }

    pub(crate) async fn credentials(&self, reload: bool) -> Result<ClientCredentials, TokenError> {
        let call = if reload {
            self.source.reload()
        } else {
            self.source.credentials()
        };
        match tokio::time::timeout(self.credentials_timeout, call).await {
            Ok(result) => result.map_err(TokenError::Credentials),
            Err(_) => Err(TokenError::Credentials(
                truelayer_auth::CredentialsError::retryable(format!(
                    "the credentials source did not answer within {} ms",
                    self.credentials_timeout.as_millis()
                )),
            )),
        }
    }

    /// The `refresh_token` grant, once. (`refresh.rs` retries an `invalid_client` with
    /// reloaded credentials, after confirming the lock.)
    pub(crate) async fn refresh_grant(
        &self,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<UserTokens, TokenError> {
        self.client
            .refresh_user_token(&self.environment, creds, refresh_token)
            .await
    }
}

/// A connection as callers see it: everything but its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connection {
    /// The id.
    pub id: ConnectionId,
    /// The TrueLayer client it belongs to.
    pub client_id: String,
    /// The granted scopes, space separated.
    pub scopes: String,
    /// The bank (`provider_id` from `/data/v1/me`), when known.
    pub provider_id: Option<String>,
    /// TrueLayer's `credentials_id`, when known.
    pub credentials_id: Option<String>,
    /// Where it stands.
    pub status: ConnectionStatus,
    /// When the user consented (or the connection was last extended).
    pub consented_at: SystemTime,
    /// When consent lapses unless extended: 90 days after [`consented_at`](Self::consented_at).
    pub consent_expires_at: SystemTime,
    /// When the stored access token expires.
    pub access_expires_at: SystemTime,
    /// Whether it can be refreshed (consent included `offline_access`).
    pub refreshable: bool,
    /// The row's version: how many times it was written.
    pub version: u64,
}

impl From<&ConnectionRecord> for Connection {
    fn from(r: &ConnectionRecord) -> Self {
        Connection {
            id: r.id.clone(),
            client_id: r.client_id.clone(),
            scopes: r.scopes.clone(),
            provider_id: r.provider_id.clone(),
            credentials_id: r.credentials_id.clone(),
            status: r.status,
            consented_at: r.consented_at,
            consent_expires_at: r.consented_at + CONSENT_LIFETIME,
            access_expires_at: r.access_expires_at,
            refreshable: r.refresh_token.is_some(),
            version: r.version,
        }
    }
}

/// What [`ConnectionManager::extend`] brought.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Extension {
    /// Extended: consent counts 90 days from now, and the new pair is stored.
    Extended,
    /// The bank needs the user: send them to this link. It ends in a new code at the
    /// redirect URI given to [`ConnectionManager::extend_with_redirect_uri`] (else the
    /// connection's own); pass it to [`ConnectionManager::connect_as`] with this
    /// connection's id.
    AuthenticationNeeded {
        /// The link for the user.
        user_input_link: String,
    },
}

/// Connects users' bank accounts and keeps their Data API tokens fresh.
///
/// - [`connect`](Self::connect) exchanges a checked callback's code, stores the connection
///   (both tokens in one row) **before** anything else can fail, reads `/data/v1/me` for its
///   provider and `credentials_id`, and returns its id.
/// - [`token`](Self::token) returns a usable access token: the payments cache's engine
///   ([`Refresher`]) serves it lock-free while valid, refreshes ahead of expiry in the
///   background, one refresh at a time per connection in the process; each refresh takes the
///   store's lock for the connection, re-reads the row, uses a row another process already
///   refreshed, and otherwise spends the refresh token and writes the new pair, fenced on the
///   version it read, before returning. On `invalid_grant` it re-reads before marking the
///   connection [`NeedsReconnect`](ConnectionStatus::NeedsReconnect).
/// - It is a [`TokenSource`] for requests that carry a [`ConnectionId`] extension, so
///   `truelayer-auth-tower`'s `BearerAuthLayer` authorizes per-user Data API calls, and a
///   401 refreshes that connection once and replays the request.
/// - Connections in use keep a refresher in a bounded map (S3-FIFO: entries read once go first);
///   an idle one costs nothing but its entry, and no task.
///
/// Cheap to clone (clones share everything).
///
/// # Example
///
/// ```no_run
/// use truelayer_auth::{AuthLink, EnvCredentials, Environment};
/// use truelayer_auth_connections::{ConnectionManager, EncryptionKeys, SqliteStore};
///
/// # async fn run(callback_query: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let keys = EncryptionKeys::from_env()?.ok_or("set TRUELAYER_CONNECTIONS_KEY")?;
/// let store = SqliteStore::open("connections.db", keys).await?;
/// let manager = ConnectionManager::builder(Environment::Sandbox, EnvCredentials::new(), store).build()?;
/// let link = AuthLink::builder(Environment::Sandbox, "sandbox-acme-1a2b3c", "https://acme.example/cb").build()?;
/// // ... the user consents; the browser returns to /cb?code=...&state=...
/// let id = manager.connect(&link.pending().callback(callback_query)?).await?;
/// let token = manager.token(&id).await?; // refreshed when needed, once across processes
/// # let _ = token; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectionManager {
    shared: Arc<Shared>,
    settings: CacheSettings,
    refreshers: Arc<Cache<ConnectionId, Refresher<ConnectionRefresh>>>,
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("environment", &self.shared.environment)
            .field("in_memory", &self.refreshers.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`ConnectionManager`].
pub struct ConnectionManagerBuilder {
    environment: Environment,
    source: Arc<dyn CredentialsSource>,
    store: Arc<dyn ConnectionStore>,
    client: Option<TokenClient>,
    settings: CacheSettings,
    max_in_memory: usize,
    lock_wait: Duration,
    credentials_timeout: Duration,
}

impl fmt::Debug for ConnectionManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManagerBuilder")
            .field("environment", &self.environment)
            .field("max_in_memory", &self.max_in_memory)
            .field("lock_wait", &self.lock_wait)
            .finish_non_exhaustive()
    }
}

impl ConnectionManagerBuilder {
    /// The refresh engine's settings (margins, waits, backoff): the payments cache's, with
    /// its defaults.
    #[must_use]
    pub fn settings(mut self, settings: CacheSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The token client (timeouts, limits). Default [`TokenClient::new`].
    #[must_use]
    pub fn client(mut self, client: TokenClient) -> Self {
        self.client = Some(client);
        self
    }

    /// How many connections keep a refresher in memory. Default 10,000.
    #[must_use]
    pub fn max_in_memory(mut self, n: usize) -> Self {
        self.max_in_memory = n;
        self
    }

    /// How long a refresh waits for another process's refresh of the same connection.
    /// Default 15 s: longer than a refresh takes (a 10 s request).
    #[must_use]
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Builds the manager.
    ///
    /// # Errors
    ///
    /// [`truelayer_auth::ConfigError`] for invalid settings or a client that cannot be built.
    pub fn build(self) -> Result<ConnectionManager, truelayer_auth::ConfigError> {
        let invalid = |reason| truelayer_auth::ConfigError::InvalidSetting {
            name: "connection manager",
            reason,
        };
        if self.max_in_memory == 0 || self.lock_wait.is_zero() {
            return Err(invalid(
                "max_in_memory and lock_wait must be greater than zero",
            ));
        }
        // Checks the settings once, here.
        Refresher::new(Noop, self.settings)?;
        let client = match self.client {
            Some(c) => c,
            None => TokenClient::new()?,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!(
                "truelayer-auth-connections/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|_| invalid("the HTTP client could not be built"))?;
        Ok(ConnectionManager {
            shared: Arc::new(Shared {
                store: self.store,
                environment: self.environment,
                source: self.source,
                unsaved: Mutex::new(HashMap::new()),
                client,
                http,
                lock_wait: self.lock_wait,
                credentials_timeout: self.credentials_timeout,
            }),
            settings: self.settings,
            refreshers: Arc::new(Cache::new(self.max_in_memory)),
        })
    }
}

/// Clears a writer's flag when its task ends, however it ends (its runtime may drop it).
struct WritingFlag(Arc<AtomicBool>);

impl Drop for WritingFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A refresh that is never run: builds a refresher only to validate settings.
struct Noop;

impl truelayer_auth::Refresh for Noop {
    fn refresh(&self) -> truelayer_auth::RefreshFuture<'_> {
        Box::pin(async { Err(TokenError::CacheDropped) })
    }
    fn time_limit(&self) -> Duration {
        Duration::from_secs(1)
    }
}

impl ConnectionManager {
    /// A builder for connections of `environment`'s users, for the client `source` gives
    /// credentials for, kept in `store`.
    pub fn builder(
        environment: Environment,
        source: impl CredentialsSource,
        store: impl ConnectionStore,
    ) -> ConnectionManagerBuilder {
        ConnectionManagerBuilder {
            environment,
            source: Arc::new(source),
            store: Arc::new(store),
            client: None,
            settings: CacheSettings::default(),
            max_in_memory: 10_000,
            lock_wait: Duration::from_secs(15),
            credentials_timeout: Duration::from_secs(5),
        }
    }

    /// Exchanges `code` and stores the new connection under a random id, which is returned.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Token`] when the exchange fails (an expired or used code is
    /// `invalid_grant`), [`ConnectionError::Store`] when the row cannot be written.
    pub async fn connect(&self, code: &AuthorizationCode) -> Result<ConnectionId, ConnectionError> {
        let id = ConnectionId::random();
        self.connect_as(&id, code).await?;
        Ok(id)
    }

    /// Exchanges `code` and stores the connection under `id` (say, your user's id). An
    /// existing connection with that id, in any state, is replaced: this is how a user
    /// reconnects.
    ///
    /// The tokens are stored before anything else can fail; `/data/v1/me` is read after, and
    /// a failure there only leaves the provider and `credentials_id` unknown.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_as(
        &self,
        id: &ConnectionId,
        code: &AuthorizationCode,
    ) -> Result<(), ConnectionError> {
        // In a task of its own: a caller that stops waiting (a browser that disconnects from
        // the callback) must not drop the consent between the exchange and the write.
        let (this, task_id, code) = (self.clone(), id.clone(), code.clone());
        tokio::spawn(async move { this.connect_now(&task_id, &code).await })
            .await
            .map_err(|_| ConnectionError::Writing(id.clone()))?
    }

    async fn connect_now(
        &self,
        id: &ConnectionId,
        code: &AuthorizationCode,
    ) -> Result<(), ConnectionError> {
        let s = &self.shared;
        let token_err = |source| ConnectionError::Token {
            id: id.clone(),
            source,
        };
        let creds = s.credentials(false).await.map_err(token_err)?;
        let now = SystemTime::now();
        let (access, access_expires_at, refresh, scopes) = match s
            .client
            .exchange_code(&s.environment, &creds, code)
            .await
        {
            Ok(tokens) => {
                let (access, refresh) = tokens.into_parts();
                let scopes = access
                    .granted_scope()
                    .map_or_else(|| code.scopes().as_str().to_owned(), str::to_owned);
                let expires = now + access.remaining();
                (Some(access), expires, refresh, scopes)
            }
            // A refresh token without a usable access token: stored, so the first `token()`
            // refreshes with it.
            Err(e) if e.salvaged_refresh_token().is_some() => {
                warn!(connection_id = %id, "the code exchange's access token was unusable; its refresh token is kept");
                (
                    None,
                    SystemTime::UNIX_EPOCH,
                    e.salvaged_refresh_token().cloned(),
                    code.scopes().as_str().to_owned(),
                )
            }
            Err(e) => return Err(token_err(e)),
        };
        let mut record = ConnectionRecord::new(
            id.clone(),
            creds.client_id(),
            scopes,
            access
                .as_ref()
                .map_or_else(|| SecretString::from(""), |a| a.secret().clone()),
            access_expires_at,
            refresh,
            now,
        );
        self.write_new(&mut record).await?;
        self.refreshers.remove(id);
        info!(connection_id = %id, "connection stored");

        let Some(access) = access else {
            return Ok(());
        };
        match self.me(id, &access).await {
            Ok((provider_id, credentials_id)) => {
                record.provider_id = provider_id;
                record.credentials_id = credentials_id;
                record.updated_at = SystemTime::now();
                if let Err(e) = s.store.update(&record).await {
                    warn!(connection_id = %id, error = %truelayer_auth::error_chain(&e), "storing the connection's provider failed; its tokens are stored");
                }
            }
            Err(e) => {
                warn!(connection_id = %id, error = %truelayer_auth::error_chain(&e), "reading /data/v1/me failed; the connection is stored without its provider");
            }
        }
        Ok(())
    }

    /// Inserts `record`, or replaces the row with its id (a reconnect), fenced on the
    /// version read and tried again when another writer got there first. No lock: the new
    /// consent's pair replaces whatever the row holds, and a refresh of the old consent
    /// under way finds its spent token gone and keeps this row.
    async fn write_new(&self, record: &mut ConnectionRecord) -> Result<(), ConnectionError> {
        let s = &self.shared;
        let id = record.id.clone();
        let err = |e| ConnectionError::store(&id, e);
        match s.store.insert(record).await {
            Ok(()) => return Ok(()),
            Err(crate::StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(err(e)),
        }
        let mut tries = 0;
        loop {
            let old = s
                .store
                .get(&id)
                .await
                .map_err(err)?
                .ok_or_else(|| ConnectionError::NotFound(id.clone()))?;
            record.version = old.version;
            match s.store.update(record).await {
                Ok(version) => {
                    record.version = version;
                    return Ok(());
                }
                Err(crate::StoreError::VersionConflict { .. }) if tries < 10 => tries += 1,
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// A usable access token for connection `id`; see the type's docs.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::NeedsReconnect`] (the user must consent again),
    /// [`ConnectionError::Deleted`], [`ConnectionError::NotFound`],
    /// [`ConnectionError::NoRefreshToken`], or the token endpoint's or store's failure once
    /// the refresh engine's wait is over.
    pub async fn token(&self, id: &ConnectionId) -> Result<AccessToken, ConnectionError> {
        self.refresher(id)
            .token()
            .await
            .map_err(|e| ConnectionError::from_token_error(id, e))
    }

    fn refresher(&self, id: &ConnectionId) -> Refresher<ConnectionRefresh> {
        self.refreshers
            .get_or_insert_with(id, || {
                Ok::<_, std::convert::Infallible>(
                    Refresher::new(
                        ConnectionRefresh::new(id.clone(), self.shared.clone()),
                        self.settings,
                    )
                    .expect("settings were checked by the builder"),
                )
            })
            .unwrap_or_else(|never| match never {})
    }

    /// The connection, without its tokens.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::NotFound`], or the store's failure.
    pub async fn get(&self, id: &ConnectionId) -> Result<Connection, ConnectionError> {
        self.shared
            .store
            .get(id)
            .await
            .map_err(|e| ConnectionError::store(id, e))?
            .map(|r| Connection::from(&r))
            .ok_or_else(|| ConnectionError::NotFound(id.clone()))
    }

    /// Every stored connection, deleted ones included, without tokens.
    ///
    /// # Errors
    ///
    /// The store's failure.
    pub async fn list(&self) -> Result<Vec<Connection>, ConnectionError> {
        let none = ConnectionId::random();
        Ok(self
            .shared
            .store
            .list()
            .await
            .map_err(|e| ConnectionError::store(&none, e))?
            .iter()
            .map(Connection::from)
            .collect())
    }

    /// Extends the connection's consent (`POST {data api}/connections/extend`, UK), a writer
    /// of the token pair under the connection's lock like a refresh: a new pair is written
    /// as a refreshed one is, by a task that holds the lock until the write succeeds.
    ///
    /// A connection that needs reconnecting because its consent ended can be extended too:
    /// the bank then usually wants the user ([`Extension::AuthenticationNeeded`]).
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token), and [`ConnectionError::Api`] when TrueLayer refuses.
    pub async fn extend(&self, id: &ConnectionId) -> Result<Extension, ConnectionError> {
        self.extend_with(id, None).await
    }

    /// [`extend`](Self::extend), asking TrueLayer to send the user's new code (when the bank
    /// wants the user) to `redirect_uri`, which must be allow-listed for the client. Finish
    /// with [`connect_as`](Self::connect_as) this connection's id and
    /// [`AuthorizationCode::new`] of that code, this redirect URI and no PKCE verifier.
    ///
    /// # Errors
    ///
    /// As [`extend`](Self::extend).
    pub async fn extend_with_redirect_uri(
        &self,
        id: &ConnectionId,
        redirect_uri: &str,
    ) -> Result<Extension, ConnectionError> {
        self.extend_with(id, Some(redirect_uri)).await
    }

    async fn extend_with(
        &self,
        id: &ConnectionId,
        redirect_uri: Option<&str>,
    ) -> Result<Extension, ConnectionError> {
        const CALL: &str = "connections/extend";
        let s = &self.shared;
        if s.unsaved_state(id).is_some() {
            return Err(ConnectionError::Writing(id.clone()));
        }
        let lock = s
            .store
            .lock(id, s.lock_wait)
            .await
            .map_err(|e| ConnectionError::store(id, e))?;
        let answer = async {
            let row = s
                .store
                .get(id)
                .await
                .map_err(|e| ConnectionError::store(id, e))?
                .ok_or_else(|| ConnectionError::NotFound(id.clone()))?;
            if row.status == ConnectionStatus::Deleted {
                return Err(ConnectionError::Deleted(id.clone()));
            }
            let refresh = row
                .refresh_token
                .clone()
                .ok_or_else(|| ConnectionError::NoRefreshToken(id.clone()))?;
            let creds = s
                .credentials(false)
                .await
                .map_err(|e| ConnectionError::Token {
                    id: id.clone(),
                    source: e,
                })?;
            if creds.client_id() != row.client_id {
                return Err(ConnectionError::OtherClient {
                    id: id.clone(),
                    stored: row.client_id.clone(),
                });
            }
            // The refresh token is spent by the call: only while the store confirms the lock.
            if !matches!(lock.confirm().await, Ok(true)) {
                return Err(ConnectionError::Writing(id.clone()));
            }
            let url = format!(
                "{}/connections/extend",
                s.environment.data_api_url().as_str().trim_end_matches('/')
            );
            let mut body = serde_json::json!({
                "client_id": creds.client_id(),
                "client_secret": creds.client_secret().expose_secret(),
                "refresh_token": refresh.expose_secret(),
                "user_has_reconfirmed_consent": true,
            });
            if let Some(uri) = redirect_uri {
                body["redirect_uri"] = serde_json::Value::from(uri);
            }
            let (status, value) = self
                .call(
                    id,
                    CALL,
                    s.http.post(url).json(&body),
                    &[&refresh, creds.client_secret()],
                )
                .await?;
            Ok::<_, ConnectionError>((row, refresh, status, value))
        }
        .await;
        let (row, spent, status, value) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let _ = lock.release().await;
                return Err(e);
            }
        };
        let api = |why: &str| ConnectionError::Api {
            id: id.clone(),
            call: CALL,
            status: Some(status),
            source: Some(Arc::new(std::io::Error::other(why.to_owned()))),
        };
        let text = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(SecretString::from)
        };
        match value.get("action_needed").and_then(Value::as_str) {
            Some("no_action_needed") => {
                let Some(new_refresh) = text("refresh_token") else {
                    // Nothing to write; whether the old token was spent, a refresh will tell.
                    let _ = lock.release().await;
                    return Err(api("the answer lacks a refresh_token"));
                };
                let now = SystemTime::now();
                let mut next = row;
                next.refresh_token = Some(new_refresh);
                next.status = ConnectionStatus::Active;
                next.consented_at = now;
                next.updated_at = now;
                // A usable access token with a sane lifetime, or none: the new refresh token
                // is the only copy of it either way, and is kept.
                let lifetime = value
                    .get("expires_in")
                    .and_then(Value::as_u64)
                    .filter(|&s| s > 0 && s <= 24 * 60 * 60)
                    .map(Duration::from_secs);
                match (text("access_token"), lifetime) {
                    (Some(access), Some(lifetime)) => {
                        next.access_token = access;
                        next.access_expires_at = now + lifetime;
                    }
                    _ => next.access_expires_at = SystemTime::UNIX_EPOCH,
                }
                let writer = s.spawn_writer(id, lock, Some((next, spent)));
                let written = writer
                    .await
                    .map_err(|_| ConnectionError::Writing(id.clone()))??;
                // The refresher held the old pair: the next read loads the new one.
                self.refreshers.remove(id);
                match written {
                    Written::Ours => Ok(Extension::Extended),
                    Written::Theirs => Err(ConnectionError::Writing(id.clone())),
                }
            }
            Some("authentication_needed") => {
                let _ = lock.release().await;
                let link = value
                    .get("user_input_link")
                    .and_then(Value::as_str)
                    .ok_or_else(|| api("the answer lacks user_input_link"))?;
                Ok(Extension::AuthenticationNeeded {
                    user_input_link: link.to_owned(),
                })
            }
            _ => {
                let _ = lock.release().await;
                Err(api("the answer has no known action_needed"))
            }
        }
    }

    /// Deletes the connection: revokes it at TrueLayer (`DELETE {auth}/api/delete`), then
    /// marks it deleted, under its lock. A connection TrueLayer no longer accepts (it needs
    /// reconnecting) is only marked.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::NotFound`], [`ConnectionError::Api`] when TrueLayer refuses the
    /// revocation (nothing is marked), or the store's failure.
    pub async fn delete(&self, id: &ConnectionId) -> Result<(), ConnectionError> {
        let s = &self.shared;
        // A usable token first (it may refresh, which takes the lock itself).
        let token = match self.token(id).await {
            Ok(t) => Some(t),
            Err(e) if e.needs_reconnect() => None,
            Err(ConnectionError::Deleted(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let err = |e| ConnectionError::store(id, e);
        let lock = s.store.lock(id, s.lock_wait).await.map_err(err)?;
        let result = async {
            let mut row = s
                .store
                .get(id)
                .await
                .map_err(err)?
                .ok_or_else(|| ConnectionError::NotFound(id.clone()))?;
            if row.status == ConnectionStatus::Deleted {
                return Ok(());
            }
            if let Some(token) = token {
                // The row's token is the newest; ours, if another process refreshed since.
                let bearer = if row.access_expires_at > SystemTime::now() {
                    row.access_token.clone()
                } else {
                    token.secret().clone()
                };
                let mut url = s.environment.auth_url();
                url.set_path(&format!("{}/api/delete", url.path().trim_end_matches('/')));
                let request = s.http.delete(url).bearer_auth(bearer.expose_secret());
                self.call(id, "api/delete", request, &[&bearer]).await?;
            }
            row.status = ConnectionStatus::Deleted;
            row.updated_at = SystemTime::now();
            s.store.update(&row).await.map_err(err)?;
            Ok(())
        }
        .await;
        let _ = lock.release().await;
        self.refreshers.remove(id);
        result
    }

    /// `GET /data/v1/me`: the provider and `credentials_id`.
    async fn me(
        &self,
        id: &ConnectionId,
        access: &AccessToken,
    ) -> Result<(Option<String>, Option<String>), ConnectionError> {
        let s = &self.shared;
        let url = format!(
            "{}/me",
            s.environment.data_api_url().as_str().trim_end_matches('/')
        );
        let request = s
            .http
            .get(url)
            .header(http::header::AUTHORIZATION, access.authorization_header());
        let (_, value) = self
            .call(id, "/data/v1/me", request, &[access.secret()])
            .await?;
        let first = value
            .get("results")
            .and_then(Value::as_array)
            .and_then(|r| r.first());
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        Ok((
            text(first.and_then(|f| f.pointer("/provider/provider_id"))),
            text(first.and_then(|f| f.get("credentials_id"))),
        ))
    }

    /// Sends a Data API call and reads its JSON answer; any status but 2xx is an error whose
    /// text (TrueLayer's `error`, scrubbed of `secrets`) is the source.
    async fn call(
        &self,
        id: &ConnectionId,
        call: &'static str,
        request: reqwest::RequestBuilder,
        secrets: &[&SecretString],
    ) -> Result<(StatusCode, Value), ConnectionError> {
        let api = |status, source: Option<Arc<dyn std::error::Error + Send + Sync>>| {
            ConnectionError::Api {
                id: id.clone(),
                call,
                status,
                source,
            }
        };
        let response = request
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| api(None, Some(Arc::new(e.without_url()))))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| api(Some(status), Some(Arc::new(e.without_url()))))?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // Scrubbed before it is shortened, so a secret on the cut is never half kept.
            let mut text = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error body")
                .to_owned();
            for secret in secrets {
                let secret = secret.expose_secret();
                if secret.len() >= 4 {
                    text = text.replace(secret, "[redacted]");
                }
            }
            let text = text
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect::<String>();
            return Err(api(
                Some(status),
                Some(Arc::new(std::io::Error::other(format!(
                    "TrueLayer answered `{text}`"
                )))),
            ));
        }
        Ok((status, value))
    }
}

impl TokenSource for ConnectionManager {
    fn cached(&self, request: &http::Extensions) -> Result<Option<AccessToken>, TokenError> {
        let id = request
            .get::<ConnectionId>()
            .ok_or_else(|| ConnectionError::MissingConnectionId.into_token_error())?;
        Ok(self.refresher(id).cached())
    }

    fn token(&self, request: &http::Extensions) -> TokenFuture {
        let Some(id) = request.get::<ConnectionId>() else {
            return Box::pin(std::future::ready(Err(
                ConnectionError::MissingConnectionId.into_token_error(),
            )));
        };
        let refresher = self.refresher(id);
        Box::pin(async move { refresher.token().await })
    }

    fn invalidate(&self, token: &AccessToken) -> bool {
        truelayer_auth::invalidate_issued(token).unwrap_or(false)
    }

    fn replacement(&self, rejected: &AccessToken, request: &http::Extensions) -> TokenFuture {
        truelayer_auth::replacement_issued(rejected)
            .unwrap_or_else(|| TokenSource::token(self, request))
    }

    fn reports_through_tokens(&self) -> bool {
        true
    }
}

impl From<ConnectionError> for TokenError {
    fn from(e: ConnectionError) -> Self {
        e.into_token_error()
    }
}
