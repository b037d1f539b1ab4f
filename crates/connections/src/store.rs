//! Where connections live: the [`ConnectionStore`] trait, its record, and its errors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

/// The future of a [`ConnectionStore`] call.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A connection's id: this library's name for one user's consent at one bank, chosen when the
/// connection is stored (a UUID v4 by default).
///
/// 1 to 64 characters of `A-Z a-z 0-9 - _ .`, so it can go in a path, a log line or a file name.
///
/// # Example
///
/// ```
/// use truelayer_auth_connections::ConnectionId;
///
/// let id: ConnectionId = "user-42.barclays".parse()?;
/// assert_eq!(id.as_str(), "user-42.barclays");
/// assert!("has space".parse::<ConnectionId>().is_err());
/// # Ok::<(), truelayer_auth_connections::InvalidConnectionId>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(String);

impl ConnectionId {
    /// A new random id (a UUID v4).
    pub fn random() -> Self {
        ConnectionId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text that is not a [`ConnectionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a connection id is 1 to 64 characters of letters, digits, '-', '_' and '.'; this one is not"
)]
pub struct InvalidConnectionId;

impl FromStr for ConnectionId {
    type Err = InvalidConnectionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(ConnectionId(s.to_owned()))
        } else {
            Err(InvalidConnectionId)
        }
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionStatus {
    /// Its tokens work, or can be refreshed.
    Active,
    /// TrueLayer refused its refresh token for good (`invalid_grant`: consent expired or
    /// revoked, or the token was spent elsewhere). The user must consent again.
    NeedsReconnect,
    /// Deleted: revoked at TrueLayer. Kept as a tombstone so nothing revives it.
    Deleted,
}

impl ConnectionStatus {
    /// `active`, `needs_reconnect` or `deleted`: how stores write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Active => "active",
            ConnectionStatus::NeedsReconnect => "needs_reconnect",
            ConnectionStatus::Deleted => "deleted",
        }
    }

    /// The status [`as_str`](Self::as_str) wrote, if `s` is one.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => ConnectionStatus::Active,
            "needs_reconnect" => ConnectionStatus::NeedsReconnect,
            "deleted" => ConnectionStatus::Deleted,
            _ => return None,
        })
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One connection as a store holds it: one row, with the access and refresh token
/// **together**, as TrueLayer advises, so they can never diverge.
///
/// `Debug` shows neither token.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectionRecord {
    /// The connection's id.
    pub id: ConnectionId,
    /// The TrueLayer client the tokens were issued to.
    pub client_id: String,
    /// The granted scopes, space separated, as the token endpoint answered them.
    pub scopes: String,
    /// The bank, from `/data/v1/me` (`provider.provider_id`), when known.
    pub provider_id: Option<String>,
    /// TrueLayer's `credentials_id`, from `/data/v1/me`, when known.
    pub credentials_id: Option<String>,
    /// The current access token.
    pub access_token: SecretString,
    /// When the access token expires, by the wall clock.
    pub access_expires_at: SystemTime,
    /// The current refresh token; `None` when consent did not include `offline_access`.
    pub refresh_token: Option<SecretString>,
    /// When the user consented (the 90-day consent counts from here; an extension resets it).
    pub consented_at: SystemTime,
    /// When the row was last written.
    pub updated_at: SystemTime,
    /// Where the connection stands.
    pub status: ConnectionStatus,
    /// The row's version: 1 when inserted, one more on every write. Writes are fenced on it.
    pub version: u64,
}

impl ConnectionRecord {
    /// A new, active record at version 1.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ConnectionId,
        client_id: impl Into<String>,
        scopes: impl Into<String>,
        access_token: SecretString,
        access_expires_at: SystemTime,
        refresh_token: Option<SecretString>,
        now: SystemTime,
    ) -> Self {
        ConnectionRecord {
            id,
            client_id: client_id.into(),
            scopes: scopes.into(),
            provider_id: None,
            credentials_id: None,
            access_token,
            access_expires_at,
            refresh_token,
            consented_at: now,
            updated_at: now,
            status: ConnectionStatus::Active,
            version: 1,
        }
    }
}

impl fmt::Debug for ConnectionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionRecord")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("provider_id", &self.provider_id)
            .field("credentials_id", &self.credentials_id)
            .field("access_token", &"[redacted]")
            .field("access_expires_at", &self.access_expires_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("consented_at", &self.consented_at)
            .field("status", &self.status)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A held lock on one connection, across processes: a lease that the store renews while
/// the guard lives and that lapses by itself if the process dies.
pub trait ConnectionLock: Send + fmt::Debug {
    /// Gives the lock back. Dropping the guard also does, in the background; this waits for
    /// it.
    fn release(self: Box<Self>) -> StoreFuture<'static, ()>;

    /// Whether the lease may have lapsed (a renewal failed or came too late): a writer should
    /// rely on the fenced write, not on the lock, from here on.
    fn is_lost(&self) -> bool;

    /// Asks the store, now, whether the lock is still held: one round trip. A refresh calls
    /// it right before it spends a refresh token, since [`is_lost`](Self::is_lost) only
    /// knows what the last renewal saw. The default trusts `is_lost`.
    fn confirm(&self) -> StoreFuture<'_, bool> {
        let held = !self.is_lost();
        Box::pin(async move { Ok(held) })
    }
}

/// A durable home for connections, shared by every process that serves them.
///
/// Writes are fenced: [`update`](Self::update) succeeds only if the stored version is the one
/// the writer read, so a writer that lost its lock (a lapsed lease, a paused process) can
/// never overwrite a newer pair blindly. [`lock`](Self::lock) serialises the refresh of one
/// connection across processes.
pub trait ConnectionStore: Send + Sync + 'static {
    /// Stores a new connection (its `version` must be 1).
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] if the id is taken, or the store's own failure.
    fn insert(&self, record: &ConnectionRecord) -> StoreFuture<'_, ()>;

    /// The connection with this id, if stored (deleted ones included).
    fn get(&self, id: &ConnectionId) -> StoreFuture<'_, Option<ConnectionRecord>>;

    /// Every stored connection, deleted ones included, by id.
    fn list(&self) -> StoreFuture<'_, Vec<ConnectionRecord>>;

    /// Writes `record` if the stored row is still at `record.version`; the stored row then
    /// has `record.version + 1`, which is returned.
    ///
    /// # Errors
    ///
    /// [`StoreError::VersionConflict`] when another writer got there first,
    /// [`StoreError::NotFound`] when there is no such row.
    fn update(&self, record: &ConnectionRecord) -> StoreFuture<'_, u64>;

    /// Takes the cross-process lock of connection `id`, waiting up to `wait`.
    ///
    /// # Errors
    ///
    /// [`StoreError::LockTimeout`] when another holder kept it longer than `wait`.
    fn lock(&self, id: &ConnectionId, wait: Duration) -> StoreFuture<'_, Box<dyn ConnectionLock>>;

    /// How long a lock held by a process that died keeps others waiting at most.
    fn lease(&self) -> Duration;
}

/// What went wrong in a [`ConnectionStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row changed since it was read: another writer won.
    #[error(
        "the connection was written by someone else since it was read (version {expected} is now {found}); re-read it"
    )]
    VersionConflict {
        /// The version the writer read.
        expected: u64,
        /// The version stored now.
        found: u64,
    },
    /// No connection with that id.
    #[error("no connection with id {0}")]
    NotFound(ConnectionId),
    /// A connection with that id is stored already.
    #[error("a connection with id {0} is stored already")]
    AlreadyExists(ConnectionId),
    /// Another holder kept the connection's lock for longer than the wait.
    #[error("another process held connection {id}'s lock for longer than {waited:?}")]
    LockTimeout {
        /// The connection.
        id: ConnectionId,
        /// How long this caller waited.
        waited: Duration,
    },
    /// The store was written by a newer version of this library; nothing was changed.
    #[error(
        "the store's schema is version {found}, newer than the {supported} this library knows; upgrade the library (nothing was changed)"
    )]
    NewerSchema {
        /// The schema version found.
        found: u32,
        /// The newest this library knows.
        supported: u32,
    },
    /// The store's data cannot be read as a store (a damaged file, or not a store at all);
    /// nothing was changed.
    #[error("the store is corrupt or not a connections store (nothing was changed)")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A token is encrypted with a key this process does not have.
    #[error(
        "a token is encrypted with key `{key_id}`, which this process was not given; supply that key (nothing was changed)"
    )]
    UnknownKey {
        /// The key id named in the ciphertext.
        key_id: String,
    },
    /// A token did not decrypt with the key its ciphertext names: the wrong key under that
    /// id, or tampered data.
    #[error(
        "a token did not decrypt with key `{key_id}`: the key given under that id is not the one it was written with, or the data was altered (nothing was changed)"
    )]
    WrongKey {
        /// The key id named in the ciphertext.
        key_id: String,
    },
    /// The store could not be reached or written (I/O, a busy database, a dropped pool).
    #[error("the connections store failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::LockTimeout { .. } | StoreError::Backend(_)
        )
    }
}
