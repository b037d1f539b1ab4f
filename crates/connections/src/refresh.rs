//! The refresh protocol of one connection: what the engine (`truelayer_auth::Refresher`)
//! calls when the connection's access token needs renewing. See `docs/architecture.md`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use truelayer_auth::{AccessToken, Refresh, RefreshFuture};

use crate::error::ConnectionError;
use crate::manager::Shared;
use crate::store::{ConnectionId, ConnectionRecord, ConnectionStatus, StoreError};

/// Refreshes one connection, at most one attempt at a time in this process (the engine's
/// single flight) and, through the store's lock, across processes.
pub(crate) struct ConnectionRefresh {
    pub(crate) id: ConnectionId,
    pub(crate) shared: Arc<Shared>,
    /// The row version whose access token this process last served: a row at another
    /// version was written by someone else, whose tokens are used rather than refreshed.
    seen: Mutex<Option<u64>>,
    /// A refreshed row whose write failed: the only copy of the new refresh token. The next
    /// attempt writes it before anything else.
    unsaved: Mutex<Option<ConnectionRecord>>,
}

impl std::fmt::Debug for ConnectionRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRefresh")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Refresh for ConnectionRefresh {
    fn refresh(&self) -> RefreshFuture<'_> {
        Box::pin(async move {
            self.refresh_under_lock()
                .await
                .map_err(ConnectionError::into_token_error)
        })
    }

    /// The lock wait, a credentials load and a request (twice on `invalid_client`), and
    /// room for the store's reads and writes.
    fn time_limit(&self) -> Duration {
        let s = &self.shared;
        s.lock_wait
            + (s.credentials_timeout + s.client_timeout) * 2
            + WRITE_ATTEMPTS * Duration::from_secs(2)
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("connection_refresh", connection_id = %self.id)
    }
}

/// Writes of a refreshed pair are tried this many times before the pair is kept in memory.
const WRITE_ATTEMPTS: u32 = 3;

impl ConnectionRefresh {
    pub(crate) fn new(id: ConnectionId, shared: Arc<Shared>) -> Self {
        ConnectionRefresh {
            id,
            shared,
            seen: Mutex::new(None),
            unsaved: Mutex::new(None),
        }
    }

    fn store_err(&self, e: StoreError) -> ConnectionError {
        ConnectionError::store(&self.id, e)
    }

    /// Steps 2 to 6 of the protocol, under the connection's lock.
    async fn refresh_under_lock(&self) -> Result<AccessToken, ConnectionError> {
        let store = &self.shared.store;
        // A read that finds a usable token another process (or an earlier load) wrote never
        // takes the lock: only a refresh does.
        if self.unsaved.lock().expect("not poisoned").is_none() {
            let row = self.read().await?;
            if let Some(token) = self.newer_usable(&row) {
                return Ok(token);
            }
        }
        let lock = store
            .lock(&self.id, self.shared.lock_wait)
            .await
            .map_err(|e| self.store_err(e))?;
        let result = self.refresh_locked().await;
        if let Err(e) = lock.release().await {
            // The lease lapses by itself; the write was fenced either way.
            warn!(error = %truelayer_auth::error_chain(&e), "releasing the connection's lock failed");
        }
        result
    }

    async fn refresh_locked(&self) -> Result<AccessToken, ConnectionError> {
        let store = &self.shared.store;
        let mut row = self.read().await?;

        // A pair refreshed earlier whose write failed goes first: it holds the only valid
        // refresh token.
        let unsaved = self.unsaved.lock().expect("not poisoned").take();
        if let Some(mut pending) = unsaved {
            pending.version = row.version;
            match store.update(&pending).await {
                Ok(version) => {
                    info!("a refreshed pair whose earlier write failed is now stored");
                    pending.version = version;
                    row = pending;
                }
                Err(e) => {
                    *self.unsaved.lock().expect("not poisoned") = Some(pending);
                    return Err(self.store_err(e));
                }
            }
        }

        if let Some(token) = self.newer_usable(&row) {
            return Ok(token);
        }

        let Some(refresh_token) = row.refresh_token.clone() else {
            return Err(ConnectionError::NoRefreshToken(self.id.clone()));
        };
        let answer = self.shared.refresh_grant(&refresh_token).await;
        match answer {
            Ok(tokens) => {
                let (access, refresh) = tokens.into_parts();
                let now = SystemTime::now();
                let mut next = row.clone();
                next.access_token = access.secret().clone();
                next.access_expires_at = now + access.remaining();
                next.refresh_token = refresh;
                next.updated_at = now;
                self.persist(next, &refresh_token).await?;
                Ok(access)
            }
            Err(e) if e.is_invalid_grant() => {
                // Another process may have refreshed a moment ago: only a row that still holds
                // the refresh token just refused is marked.
                let again = self.read().await?;
                if again.refresh_token.as_ref().map(|t| t.expose_secret())
                    != Some(refresh_token.expose_secret())
                {
                    info!("invalid_grant, but the row was refreshed meanwhile: using its tokens");
                    if let Some(token) = usable(&again) {
                        *self.seen.lock().expect("not poisoned") = Some(again.version);
                        return Ok(token);
                    }
                    return Err(ConnectionError::Token {
                        id: self.id.clone(),
                        source: e,
                    });
                }
                warn!(
                    "TrueLayer refused the refresh token (invalid_grant): the connection needs the user to connect again"
                );
                let mut dead = again;
                dead.status = ConnectionStatus::NeedsReconnect;
                dead.updated_at = SystemTime::now();
                store.update(&dead).await.map_err(|e| self.store_err(e))?;
                Err(ConnectionError::NeedsReconnect(self.id.clone()))
            }
            Err(e) => Err(ConnectionError::Token {
                id: self.id.clone(),
                source: e,
            }),
        }
    }

    /// The row's token, if the row is not the one this process last served and its token is
    /// worth serving: another process refreshed (or this is the first load).
    fn newer_usable(&self, row: &ConnectionRecord) -> Option<AccessToken> {
        let mut seen = self.seen.lock().expect("not poisoned");
        if *seen == Some(row.version) {
            return None;
        }
        let token = usable(row)?;
        debug!(version = row.version, "using the stored token");
        *seen = Some(row.version);
        Some(token)
    }

    async fn read(&self) -> Result<ConnectionRecord, ConnectionError> {
        let row = self
            .shared
            .store
            .get(&self.id)
            .await
            .map_err(|e| self.store_err(e))?
            .ok_or_else(|| ConnectionError::NotFound(self.id.clone()))?;
        match row.status {
            ConnectionStatus::Active => Ok(row),
            ConnectionStatus::NeedsReconnect => {
                Err(ConnectionError::NeedsReconnect(self.id.clone()))
            }
            _ => Err(ConnectionError::Deleted(self.id.clone())),
        }
    }

    /// Writes the refreshed row, fenced on the version read. A conflict means someone wrote
    /// while this process held the lock (its lease lapsed): their row wins unless it still
    /// holds the refresh token this process just spent, in which case ours is the only valid
    /// one and is written over it. A failing store is tried again; after that the pair is
    /// kept in memory for the next attempt.
    async fn persist(
        &self,
        mut next: ConnectionRecord,
        spent: &secrecy::SecretString,
    ) -> Result<(), ConnectionError> {
        let store = &self.shared.store;
        let mut last = None;
        for attempt in 0..WRITE_ATTEMPTS {
            match store.update(&next).await {
                Ok(version) => {
                    *self.seen.lock().expect("not poisoned") = Some(version);
                    return Ok(());
                }
                Err(StoreError::VersionConflict { found, .. }) => {
                    let theirs = self.read().await?;
                    if theirs.refresh_token.as_ref().map(|t| t.expose_secret())
                        == Some(spent.expose_secret())
                    {
                        next.version = found;
                        continue;
                    }
                    error!(
                        "another writer stored a refreshed pair while this process refreshed the same connection (a lapsed lease?); keeping theirs"
                    );
                    *self.seen.lock().expect("not poisoned") = None;
                    return Ok(());
                }
                Err(e) => {
                    warn!(attempt, error = %truelayer_auth::error_chain(&e), "storing the refreshed pair failed");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100) * 4u32.pow(attempt)).await;
                }
            }
        }
        error!(
            "the refreshed pair could not be stored; it is kept in memory and written before the next refresh"
        );
        *self.unsaved.lock().expect("not poisoned") = Some(next);
        Err(self.store_err(last.expect("a write was attempted")))
    }
}

/// The row's access token if it is worth serving rather than refreshing: more than a
/// quarter of its lifetime left. The lifetime is counted from the row's last write, which
/// follows the token's issue.
fn usable(row: &ConnectionRecord) -> Option<AccessToken> {
    let now = SystemTime::now();
    let remaining = row.access_expires_at.duration_since(now).ok()?;
    let lifetime = row
        .access_expires_at
        .duration_since(row.updated_at)
        .unwrap_or(remaining)
        .max(remaining);
    if remaining * 4 <= lifetime {
        return None;
    }
    let issued_at = Instant::now()
        .checked_sub(lifetime - remaining)
        .unwrap_or_else(Instant::now);
    AccessToken::new(
        row.access_token.clone(),
        lifetime,
        issued_at,
        Some(row.scopes.clone()),
    )
    .ok()
}
