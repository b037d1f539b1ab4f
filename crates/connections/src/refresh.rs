//! The refresh protocol of one connection: what the engine (`truelayer_auth::Refresher`)
//! calls when the connection's access token needs renewing. See `docs/architecture.md`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use truelayer_auth::{AccessToken, Refresh, RefreshFuture};

use crate::error::ConnectionError;
use crate::manager::Shared;
use crate::store::{ConnectionId, ConnectionLock, ConnectionRecord, ConnectionStatus, StoreError};

/// Refreshes one connection, at most one attempt at a time in this process (the engine's
/// single flight) and, through the store's lock, across processes.
pub(crate) struct ConnectionRefresh {
    pub(crate) id: ConnectionId,
    pub(crate) shared: Arc<Shared>,
    /// The access token this refresher last served: a row with another one was written by
    /// someone else, whose tokens are used rather than refreshed. (A token, not a version:
    /// writes that change no token, such as `/me`'s, do not make a rejected token new.)
    seen: Mutex<Option<SecretString>>,
}

/// A refreshed pair not yet written: the only copy of the connection's refresh token.
/// Kept by the manager (not a refresher, which eviction may drop) until written.
pub(crate) struct Unsaved {
    next: ConnectionRecord,
    /// The refresh token spent to get it: the row may be overwritten only while it still
    /// holds this one.
    spent: SecretString,
    /// Whether a writer task is working on it; false once the task ended (written, or its
    /// runtime dropped it), so another attempt takes over.
    writing: Arc<AtomicBool>,
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
            self.attempt()
                .await
                .map_err(ConnectionError::into_token_error)
        })
    }

    /// The lock wait, a credentials load and a request (twice on `invalid_client`), and
    /// room for the store's reads. A write that outlives it goes on in its own task.
    fn time_limit(&self) -> Duration {
        let s = &self.shared;
        s.lock_wait + (s.credentials_timeout + s.client.timeout()) * 2 + Duration::from_secs(10)
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("connection_refresh", connection_id = %self.id)
    }
}

impl Unsaved {
    pub(crate) fn new(next: ConnectionRecord, spent: SecretString) -> Self {
        Unsaved {
            next,
            spent,
            writing: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn is_being_written(&self) -> bool {
        self.writing.load(Ordering::SeqCst)
    }

    pub(crate) fn start_writing(&self) -> Arc<AtomicBool> {
        self.writing.store(true, Ordering::SeqCst);
        Arc::clone(&self.writing)
    }

    pub(crate) fn pair(&self) -> (ConnectionRecord, SecretString) {
        (self.next.clone(), self.spent.clone())
    }

    pub(crate) fn set_version(&mut self, version: u64) {
        self.next.version = version;
    }
}

/// What a writer task did with a refreshed pair.
pub(crate) enum Written {
    /// Stored.
    Ours,
    /// The row holds another refresh token (the user reconnected): theirs stands.
    Theirs,
}

impl ConnectionRefresh {
    pub(crate) fn new(id: ConnectionId, shared: Arc<Shared>) -> Self {
        ConnectionRefresh {
            id,
            shared,
            seen: Mutex::new(None),
        }
    }

    fn store_err(&self, e: StoreError) -> ConnectionError {
        ConnectionError::store(&self.id, e)
    }

    /// One attempt: the protocol's steps, see `docs/architecture.md`.
    async fn attempt(&self) -> Result<AccessToken, ConnectionError> {
        let store = &self.shared.store;
        // A pair refreshed and not yet written: wait for its writer, or take over.
        let orphaned = match self.shared.unsaved_state(&self.id) {
            Some(true) => return Err(ConnectionError::Writing(self.id.clone())),
            Some(false) => true,
            None => false,
        };
        // A read that finds a usable token another process (or an earlier load) wrote never
        // takes the lock: only a refresh does.
        if !orphaned {
            let row = self.read().await?;
            if let Some(token) = self.newer_usable(&row) {
                return Ok(token);
            }
        }
        let lock = store
            .lock(&self.id, self.shared.lock_wait)
            .await
            .map_err(|e| self.store_err(e))?;
        if orphaned {
            // Written under the lock by a task of our own, then read back like any row.
            let writer = self.shared.spawn_writer(&self.id, lock, None);
            return match writer.await {
                Ok(Ok(_)) => Err(ConnectionError::Writing(self.id.clone())),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnectionError::Writing(self.id.clone())),
            };
        }
        match self.locked(lock).await {
            Step::Done(result) => result,
            Step::Release(lock, result) => {
                if let Err(e) = lock.release().await {
                    // The lease lapses by itself; writes are fenced either way.
                    warn!(error = %truelayer_auth::error_chain(&e), "releasing the connection's lock failed");
                }
                result
            }
        }
    }

    async fn locked(&self, lock: Box<dyn ConnectionLock>) -> Step {
        let row = match self.read().await {
            Ok(row) => row,
            Err(e) => return Step::Release(lock, Err(e)),
        };
        if let Some(token) = self.newer_usable(&row) {
            return Step::Release(lock, Ok(token));
        }
        let Some(spent) = row.refresh_token.clone() else {
            return Step::Release(lock, Err(ConnectionError::NoRefreshToken(self.id.clone())));
        };
        let creds = match self.shared.credentials(false).await {
            Ok(c) => c,
            Err(e) => return Step::Release(lock, Err(self.token_err(e))),
        };
        if creds.client_id() != row.client_id {
            // Another client's refresh would be refused (`invalid_grant`) and mark a healthy
            // connection dead: a configuration mistake, not the connection's fault.
            return Step::Release(
                lock,
                Err(ConnectionError::OtherClient {
                    id: self.id.clone(),
                    stored: row.client_id.clone(),
                }),
            );
        }
        // Spend only while the store confirms the lock, now: a lapsed lease or an ended
        // database session means another holder may be reading this same refresh token.
        if !matches!(lock.confirm().await, Ok(true)) {
            return Step::Release(lock, Err(ConnectionError::Writing(self.id.clone())));
        }
        let mut answer = self.shared.refresh_grant(&creds, &spent).await;
        if answer
            .as_ref()
            .is_err_and(truelayer_auth::Error::is_invalid_client)
        {
            // A rotated secret? TrueLayer spends a refresh token only for a client it accepts,
            // so the same token is sent once more with reloaded credentials, if they differ
            // and the lock still holds.
            match self.shared.credentials(true).await {
                Ok(fresh)
                    if fresh.client_id() == creds.client_id()
                        && fresh.client_secret().expose_secret()
                            != creds.client_secret().expose_secret() =>
                {
                    if !matches!(lock.confirm().await, Ok(true)) {
                        return Step::Release(lock, Err(ConnectionError::Writing(self.id.clone())));
                    }
                    warn!(
                        "invalid_client, and the credentials source had new credentials (a rotation?); retrying once with them"
                    );
                    answer = self.shared.refresh_grant(&fresh, &spent).await;
                }
                _ => {}
            }
        }
        match answer {
            Ok(tokens) => {
                let (access, refresh) = tokens.into_parts();
                let now = SystemTime::now();
                let mut next = row;
                next.access_token = access.secret().clone();
                next.access_expires_at = now + access.remaining();
                next.refresh_token = refresh;
                next.updated_at = now;
                next.status = ConnectionStatus::Active;
                Step::Done(match self.write(next, spent, lock).await {
                    Ok(Written::Ours) => {
                        *self.seen.lock().expect("not poisoned") = Some(access.secret().clone());
                        Ok(access)
                    }
                    Ok(Written::Theirs) => Err(ConnectionError::Writing(self.id.clone())),
                    Err(e) => Err(e),
                })
            }
            Err(e) if e.salvaged_refresh_token().is_some() => {
                // A new refresh token without a usable access token: store it with the access
                // token marked expired, so the next attempt refreshes with it.
                warn!("the refresh answer's access token was unusable; its refresh token is kept");
                let mut next = row;
                next.refresh_token = e.salvaged_refresh_token().cloned();
                next.access_expires_at = SystemTime::UNIX_EPOCH;
                next.updated_at = SystemTime::now();
                Step::Done(match self.write(next, spent, lock).await {
                    Ok(_) => Err(self.token_err(e)),
                    Err(w) => Err(w),
                })
            }
            Err(e) if e.is_invalid_grant() => Step::Release(lock, self.refused(&spent, e).await),
            Err(e) => Step::Release(lock, Err(self.token_err(e))),
        }
    }

    /// `invalid_grant`: another process may have refreshed a moment ago, so only a row that
    /// still holds the refused refresh token is marked.
    async fn refused(
        &self,
        spent: &SecretString,
        e: truelayer_auth::Error,
    ) -> Result<AccessToken, ConnectionError> {
        let store = &self.shared.store;
        let again = store
            .get(&self.id)
            .await
            .map_err(|e| self.store_err(e))?
            .ok_or_else(|| ConnectionError::NotFound(self.id.clone()))?;
        if !same(again.refresh_token.as_ref(), spent) {
            info!("invalid_grant, but the row was written meanwhile: using it");
            if again.status == ConnectionStatus::Active
                && let Some(token) = self.newer_usable(&again)
            {
                return Ok(token);
            }
            return Err(ConnectionError::Writing(self.id.clone()));
        }
        warn!(
            "TrueLayer refused the refresh token (invalid_grant): the connection needs the user to connect again"
        );
        let mut dead = again;
        dead.status = ConnectionStatus::NeedsReconnect;
        dead.updated_at = SystemTime::now();
        match store.update(&dead).await {
            Ok(_) => Err(ConnectionError::NeedsReconnect(self.id.clone())),
            // Written meanwhile: the next attempt reads what was written.
            Err(conflict @ StoreError::VersionConflict { .. }) => Err(self.store_err(conflict)),
            // Not marked: the next attempt is refused again and marks it then.
            Err(_) => Err(self.token_err(e)),
        }
    }

    fn token_err(&self, source: truelayer_auth::Error) -> ConnectionError {
        ConnectionError::Token {
            id: self.id.clone(),
            source,
        }
    }

    /// Hands `next` to the manager's writer task, which holds `lock` until it is written,
    /// and waits for it. The task outlives this attempt if the engine gives up on it.
    async fn write(
        &self,
        next: ConnectionRecord,
        spent: SecretString,
        lock: Box<dyn ConnectionLock>,
    ) -> Result<Written, ConnectionError> {
        let writer = self
            .shared
            .spawn_writer(&self.id, lock, Some((next, spent)));
        match writer.await {
            Ok(result) => result,
            // The runtime is shutting down: the pair stays with the manager, unwritten.
            Err(_) => Err(ConnectionError::Writing(self.id.clone())),
        }
    }

    /// The row's token, if it is not the one this refresher last served and is worth
    /// serving: another process refreshed, or this is the first load.
    fn newer_usable(&self, row: &ConnectionRecord) -> Option<AccessToken> {
        let mut seen = self.seen.lock().expect("not poisoned");
        if seen
            .as_ref()
            .is_some_and(|s| s.expose_secret() == row.access_token.expose_secret())
        {
            return None;
        }
        let token = usable(row)?;
        debug!(version = row.version, "using the stored token");
        *seen = Some(row.access_token.clone());
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
}

/// What an attempt under the lock did with the lock.
enum Step {
    /// The lock went to a writer task (which releases it).
    Done(Result<AccessToken, ConnectionError>),
    /// The lock is to be released.
    Release(
        Box<dyn ConnectionLock>,
        Result<AccessToken, ConnectionError>,
    ),
}

fn same(token: Option<&SecretString>, other: &SecretString) -> bool {
    token.is_some_and(|t| t.expose_secret() == other.expose_secret())
}

/// Writes the manager's unsaved pair for `id` under `lock`, fenced, until it is written or
/// the row holds another refresh token; a failing store is tried again, with backoff, for as
/// long as the process lives (the lock, renewed meanwhile, keeps other processes from
/// spending the refresh token the pair replaced).
pub(crate) async fn write_until_done(
    shared: Arc<Shared>,
    id: ConnectionId,
    lock: Box<dyn ConnectionLock>,
) -> Result<Written, ConnectionError> {
    let store = &shared.store;
    let mut pause = Duration::from_millis(100);
    let outcome = loop {
        let Some((mut next, spent)) = shared.unsaved_pair(&id) else {
            break Ok(Written::Theirs);
        };
        let failure = match store.update(&next).await {
            Ok(_) => break Ok(Written::Ours),
            // The row was removed from the store (by hand): nothing to write to.
            Err(StoreError::NotFound(_)) => break Ok(Written::Theirs),
            Err(StoreError::VersionConflict { .. }) => match store.get(&id).await {
                // Someone wrote while we held the lock (a lapsed lease, a metadata write): if
                // the row still holds the spent token, ours is the only valid pair.
                Ok(Some(row)) if same(row.refresh_token.as_ref(), &spent) => {
                    next.version = row.version;
                    shared.set_unsaved_version(&id, row.version);
                    continue;
                }
                Ok(_) => {
                    error!(
                        "the row holds another refresh token than the one this refresh spent (the user reconnected?); keeping it"
                    );
                    break Ok(Written::Theirs);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        error!(error = %truelayer_auth::error_chain(&failure), "storing a refreshed pair failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    };
    shared.forget_unsaved(&id);
    if let Err(e) = lock.release().await {
        warn!(error = %truelayer_auth::error_chain(&e), "releasing the connection's lock failed");
    }
    outcome
}

/// The row's access token if it is worth serving rather than refreshing: more than a
/// quarter of its lifetime left, counted as the refresh engine counts it (less the second a
/// whole-second expiry can cost), so the engine never finds it past its hard margin (at most
/// a quarter of that lifetime) on arrival. The lifetime is counted from the row's last write,
/// which follows the token's issue.
fn usable(row: &ConnectionRecord) -> Option<AccessToken> {
    let now = SystemTime::now();
    let remaining = row.access_expires_at.duration_since(now).ok()?;
    let lifetime = row
        .access_expires_at
        .duration_since(row.updated_at)
        .unwrap_or(remaining)
        .max(remaining);
    // As the engine's plan: a token of 2 s or more is good until a second before its
    // expiry, a shorter one until half its lifetime.
    let lost = if lifetime >= Duration::from_secs(2) {
        Duration::from_secs(1)
    } else {
        lifetime / 2
    };
    let (effective, left) = (lifetime - lost, remaining.checked_sub(lost)?);
    if left * 4 <= effective {
        return None;
    }
    // The monotonic clock may not reach back to the token's issue (a machine up for less
    // time than the token's age): then count its lifetime as what remains.
    let (lifetime, issued_at) = match Instant::now().checked_sub(lifetime - remaining) {
        Some(issued_at) => (lifetime, issued_at),
        None => (remaining, Instant::now()),
    };
    AccessToken::new(
        row.access_token.clone(),
        lifetime,
        issued_at,
        Some(row.scopes.clone()),
    )
    .ok()
}
