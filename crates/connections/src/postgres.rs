//! [`PostgresStore`]: connections in PostgreSQL, for a fleet; their tokens encrypted.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::{Object, Pool, PoolError, Timeouts};
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Row, SimpleQueryMessage};
use truelayer_auth_postgres::{CONNECT_TIMEOUT, Schema, Session, Settings};

use crate::crypto::EncryptionKeys;
use crate::store::{
    ConnectionId, ConnectionLock, ConnectionRecord, ConnectionStatus, ConnectionStore, StoreError,
    StoreFuture,
};

pub use truelayer_auth_postgres::TlsMode;

/// The schema: its migrations, in order (migration `n`, from 0, takes the schema from
/// version `n` to `n + 1`; a released migration is never edited, a change is a new one),
/// listed as applied in `tlauth_schema_migrations`.
const SCHEMA: Schema = Schema {
    name: "connections store",
    migrations_table: "tlauth_schema_migrations",
    table: "tlauth_connections",
    // The advisory lock (one bigint key) that serialises migrations: "TLC1" then "MIGR".
    lock: 0x544C_4331_4D49_4752,
    migrations: &[
        // 1: one row per connection, with both tokens (encrypted).
        "CREATE TABLE tlauth_connections (
        id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
        client_id text NOT NULL,
        scopes text NOT NULL,
        provider_id text,
        credentials_id text,
        access_token_enc text NOT NULL,
        access_expires_at timestamptz NOT NULL,
        refresh_token_enc text,
        consented_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        status text NOT NULL CHECK (status IN ('active', 'needs_reconnect', 'deleted')),
        version bigint NOT NULL CHECK (version >= 1)
    );",
    ],
};

/// The lock bound when the builder is not told otherwise.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Pool sizes when the builder is not told otherwise.
const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_LOCK_POOL_SIZE: usize = 16;

/// `statement_timeout` of the store's sessions when the builder is not told otherwise.
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

const COLUMNS: &str = "id, client_id, scopes, provider_id, credentials_id, access_token_enc, \
    access_expires_at, refresh_token_enc, consented_at, updated_at, status, version";

const ACCESS_TOKEN: &str = "access_token";
const REFRESH_TOKEN: &str = "refresh_token";

/// A [`ConnectionStore`] in PostgreSQL, for a fleet: every replica that connects to the same
/// database shares its connections and its locks.
///
/// - **Encrypted at rest**: both tokens are encrypted with [`EncryptionKeys`] exactly as
///   [`SqliteStore`](crate::SqliteStore) does (AES-256-GCM, bound to the row and the
///   field), so rows move between the two stores and keys rotate the same way.
/// - **Versioned schema**: the table `tlauth_schema_migrations` lists the migrations
///   applied; [`connect`](PostgresStoreBuilder::connect) applies the missing ones in one
///   transaction under a transaction-scoped advisory lock, so replicas starting at once do
///   not race. A database migrated by a newer library is refused
///   ([`StoreError::NewerSchema`]) and left unchanged, as is a `tlauth_connections` table
///   that is not ours ([`StoreError::Corrupt`]).
/// - **Fenced writes**: `UPDATE ... WHERE id = $1 AND version = $2`.
/// - **The lock** is a transaction-scoped advisory lock (`pg_advisory_xact_lock`) on a
///   64-bit hash of the connection's id, taken in a transaction on a connection of a pool
///   kept for locks, which the guard holds. Waiters wait in the server (`lock_timeout`) and
///   wake as soon as it is released. Releasing ends the transaction; a guard dropped
///   without release rolls back in the background, or, if it cannot, closes the database
///   connection: a lock is never handed back to the pool. A holder that dies, hangs or is
///   cut off loses it when the server ends its session: at once when its socket closes
///   (a killed process), else after the lease of silence (`idle_in_transaction_session_timeout`,
///   reset by the guard's ping every third of it; TCP keepalives on both sides find a dead
///   peer). [`lease`](ConnectionStore::lease) is that bound.
///
/// Why `tokio-postgres` and `deadpool-postgres` rather than `sqlx`: the same reasons as
/// `rusqlite` for SQLite. A direct, mature driver (the one `postgres`, `deadpool` and
/// `diesel-async` build on) with a small build, no query macros and no offline metadata to
/// keep in the repository; the store has nine statements. TLS is `tokio-postgres-rustls`
/// over the workspace's `rustls` with aws-lc-rs.
///
/// `Debug` shows the hosts and the database name only, never a password.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use truelayer_auth_connections::{EncryptionKeys, PostgresStore, TlsMode};
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = EncryptionKeys::from_env()?.ok_or("set TRUELAYER_CONNECTIONS_KEY")?;
/// let store = PostgresStore::builder("postgres://tlauth@db.internal/app", keys)
///     .tls_mode(TlsMode::Require)
///     .pool_size(8)
///     .lease(Duration::from_secs(20))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    locks: Pool,
    keys: EncryptionKeys,
    lease: Duration,
    target: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// Connects a [`PostgresStore`] with settings: from [`PostgresStore::builder`].
pub struct PostgresStoreBuilder {
    url: SecretString,
    keys: EncryptionKeys,
    pool_size: usize,
    lock_pool_size: usize,
    lease: Duration,
    statement_timeout: Duration,
    tls_mode: Option<TlsMode>,
    tls_config: Option<rustls::ClientConfig>,
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("pool_size", &self.pool_size)
            .field("lock_pool_size", &self.lock_pool_size)
            .field("lease", &self.lease)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls_mode", &self.tls_mode)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
    /// How many database connections serve reads and writes (16 unless set; at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How many locks this store can hold at once: each held lock keeps one database
    /// connection of a pool of its own, so locks never starve reads and writes (16 unless
    /// set; at least 1). A lock waits for a free one within its `wait`.
    pub fn lock_pool_size(mut self, size: usize) -> Self {
        self.lock_pool_size = size.max(1);
        self
    }

    /// The lock bound (30 s unless set; at least 300 ms): how long a holder that hangs or
    /// is cut off from the database keeps others waiting at most. The server ends a lock's
    /// session after this long without a statement; the guard pings every third of it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// `statement_timeout` of the store's sessions (30 s unless set; at least 100 ms), so no
    /// statement holds a connection for ever. A lock's wait has its own.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Plain or TLS ([`TlsMode`]). Unless set: the URL's `sslmode` when it has one, else
    /// [`TlsMode::Disable`] for a server on loopback or a Unix socket and
    /// [`TlsMode::Require`] for any other. Off loopback, [`TlsMode::Prefer`] is
    /// [`TlsMode::Require`], and [`TlsMode::Disable`] is logged as a warning.
    pub fn tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls_mode = Some(mode);
        self
    }

    /// The TLS client settings (roots, client certificates). Unless set: the system's
    /// trust store (`rustls-platform-verifier`) with aws-lc-rs.
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Connects, and migrates the schema if it is older than this library's (creating it
    /// in an empty database).
    ///
    /// # Errors
    ///
    /// [`StoreError::NewerSchema`], [`StoreError::Corrupt`] (a `tlauth_connections` table
    /// that is not ours), or [`StoreError::Backend`] (a bad URL, the server unreachable or
    /// refusing, TLS).
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        use secrecy::ExposeSecret;
        // A dead server is found by TCP keepalives within about a lease; a session whose
        // client vanished is ended by the server (a lock's idle timeout, its keepalives).
        let lease = self.lease;
        let idle = (lease / 3).as_secs().max(1);
        let session = Session {
            application_name: "truelayer-auth-connections",
            keepalives_idle: (lease / 3).max(Duration::from_secs(1)),
            keepalives_interval: (lease / 9).max(Duration::from_secs(1)),
            tcp_user_timeout: lease,
            options: format!(
                "-c statement_timeout={} -c tcp_keepalives_idle={idle} \
                 -c tcp_keepalives_interval={} -c tcp_keepalives_count=3",
                millis(self.statement_timeout),
                (idle / 3).max(1),
            ),
        };
        let settings = Settings::read(
            self.url.expose_secret(),
            self.tls_mode,
            self.tls_config,
            &session,
        )
        .map_err(shared_error)?;
        let target = settings.target().to_owned();
        if settings.plain_off_loopback() {
            tracing::warn!(
                target = %target,
                "the connection store connects to a server off loopback without TLS, as asked (sslmode=disable)"
            );
        }
        let pool = |size: usize| {
            settings
                .pool(size, self.statement_timeout)
                .map_err(|e| StoreError::Backend(Box::new(e)))
        };
        let inner = Inner {
            pool: pool(self.pool_size)?,
            locks: pool(self.lock_pool_size)?,
            keys: self.keys,
            lease,
            target,
        };
        let mut client = inner.pool.get().await.map_err(pool_error)?;
        SCHEMA.migrate(&mut client).await.map_err(shared_error)?;
        drop(client);
        Ok(PostgresStore {
            inner: Arc::new(inner),
        })
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db?...`, or
    /// libpq's `key=value` form) with the defaults; see [`PostgresStoreBuilder::connect`].
    ///
    /// # Errors
    ///
    /// As [`PostgresStoreBuilder::connect`].
    pub async fn connect(url: &str, keys: EncryptionKeys) -> Result<Self, StoreError> {
        Self::builder(url, keys).connect().await
    }

    /// A builder for the store in the database at `url`, its tokens encrypted with `keys`.
    pub fn builder(url: &str, keys: EncryptionKeys) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: SecretString::from(url.to_owned()),
            keys,
            pool_size: DEFAULT_POOL_SIZE,
            lock_pool_size: DEFAULT_LOCK_POOL_SIZE,
            lease: DEFAULT_LEASE,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            tls_mode: None,
            tls_config: None,
        }
    }

    /// Re-encrypts with the current key every token that another key wrote, so an old key
    /// can be retired; returns how many connections were rewritten. Their versions do not
    /// change (their content does not), and a row written meanwhile is left to its writer,
    /// which encrypts with its own current key.
    ///
    /// # Errors
    ///
    /// Those of [`ConnectionStore::get`], for a token no key given decrypts.
    pub async fn reencrypt_all(&self) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let keys = &self.inner.keys;
        let current = format!("tlc1.{}.", keys.current_key_id());
        let rows = client
            .query(
                "SELECT id, access_token_enc, refresh_token_enc, version \
                 FROM tlauth_connections ORDER BY id",
                &[],
            )
            .await
            .map_err(backend)?;
        let mut rewritten = 0;
        for row in rows {
            let (id, access, refresh, version): (String, String, Option<String>, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let stale = !access.starts_with(&current)
                || refresh.as_ref().is_some_and(|r| !r.starts_with(&current));
            if !stale {
                continue;
            }
            let cid = parse_id(&id)?;
            let access = keys.encrypt(
                &cid,
                ACCESS_TOKEN,
                &keys.decrypt(&cid, ACCESS_TOKEN, &access)?,
            )?;
            let refresh = refresh
                .map(|r| keys.encrypt(&cid, REFRESH_TOKEN, &keys.decrypt(&cid, REFRESH_TOKEN, &r)?))
                .transpose()?;
            rewritten += client
                .execute(
                    "UPDATE tlauth_connections SET access_token_enc = $1, refresh_token_enc = $2 \
                     WHERE id = $3 AND version = $4",
                    &[&access, &refresh, &id, &version],
                )
                .await
                .map_err(backend)?;
        }
        Ok(usize::try_from(rewritten).unwrap_or(usize::MAX))
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.inner.pool.get().await.map_err(pool_error)
    }
}

/// A failure of the store's own, as text.
#[derive(Debug)]
struct Problem(String);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Problem {}

fn problem(what: impl Into<String>) -> StoreError {
    StoreError::Backend(Box::new(Problem(what.into())))
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(Box::new(Problem(what.into())))
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn shared_error(e: truelayer_auth_postgres::Error) -> StoreError {
    use truelayer_auth_postgres::Error;
    match e {
        Error::Config(what) => problem(what),
        Error::Tls(e) => StoreError::Backend(Box::new(e)),
        Error::Database(e) => backend(e),
        Error::Corrupt(what) => corrupt(what),
        Error::NewerSchema { found, supported } => StoreError::NewerSchema { found, supported },
    }
}

/// Whole milliseconds, rounded up: a server-side timeout never ends before the wait asked
/// for (a wait of 149.7 ms cut to 149 let a lock wait end short of it).
fn millis(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000).max(1)
}

fn parse_id(id: &str) -> Result<ConnectionId, StoreError> {
    id.parse().map_err(|e| StoreError::Corrupt(Box::new(e)))
}

fn version_to_sql(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

fn decrypt_row(row: &Row, keys: &EncryptionKeys) -> Result<ConnectionRecord, StoreError> {
    let id = parse_id(row.get(0))?;
    let access_token = keys.decrypt(&id, ACCESS_TOKEN, row.get(5))?;
    let refresh_token = row
        .get::<_, Option<&str>>(7)
        .map(|t| keys.decrypt(&id, REFRESH_TOKEN, t))
        .transpose()?;
    let status: &str = row.get(10);
    let status = ConnectionStatus::parse(status)
        .ok_or_else(|| corrupt(format!("unknown connection status `{status}`")))?;
    let version: i64 = row.get(11);
    let version = u64::try_from(version)
        .map_err(|_| corrupt(format!("version {version} is not a version")))?;
    let mut record = ConnectionRecord::new(
        id,
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        access_token,
        row.get::<_, SystemTime>(6),
        refresh_token,
        row.get::<_, SystemTime>(8),
    );
    record.provider_id = row.get(3);
    record.credentials_id = row.get(4);
    record.updated_at = row.get(9);
    record.status = status;
    record.version = version;
    Ok(record)
}

/// The encrypted tokens of `record`.
fn encrypt_tokens(
    keys: &EncryptionKeys,
    record: &ConnectionRecord,
) -> Result<(String, Option<String>), StoreError> {
    let access = keys.encrypt(&record.id, ACCESS_TOKEN, &record.access_token)?;
    let refresh = record
        .refresh_token
        .as_ref()
        .map(|t| keys.encrypt(&record.id, REFRESH_TOKEN, t))
        .transpose()?;
    Ok((access, refresh))
}

impl ConnectionStore for PostgresStore {
    /// Stores a new connection; a record whose `version` is not 1 is refused with
    /// [`StoreError::VersionConflict`] `{ expected: its version, found: 0 }` (no row yet).
    /// Times are stored to the microsecond.
    fn insert(&self, record: &ConnectionRecord) -> StoreFuture<'_, ()> {
        let record = record.clone();
        Box::pin(async move {
            if record.version != 1 {
                return Err(StoreError::VersionConflict {
                    expected: record.version,
                    found: 0,
                });
            }
            let (access, refresh) = encrypt_tokens(&self.inner.keys, &record)?;
            let client = self.client().await?;
            let statement = client
                .prepare_cached(&format!(
                    "INSERT INTO tlauth_connections ({COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1)"
                ))
                .await
                .map_err(backend)?;
            let result = client
                .execute(
                    &statement,
                    &[
                        &record.id.as_str(),
                        &record.client_id,
                        &record.scopes,
                        &record.provider_id,
                        &record.credentials_id,
                        &access,
                        &record.access_expires_at,
                        &refresh,
                        &record.consented_at,
                        &record.updated_at,
                        &record.status.as_str(),
                    ],
                )
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(StoreError::AlreadyExists(record.id.clone()))
                }
                Err(e) => Err(backend(e)),
            }
        })
    }

    fn get(&self, id: &ConnectionId) -> StoreFuture<'_, Option<ConnectionRecord>> {
        let id = id.clone();
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM tlauth_connections WHERE id = $1"
                ))
                .await
                .map_err(backend)?;
            let row = client
                .query_opt(&statement, &[&id.as_str()])
                .await
                .map_err(backend)?;
            row.map(|row| decrypt_row(&row, &self.inner.keys))
                .transpose()
        })
    }

    fn list(&self) -> StoreFuture<'_, Vec<ConnectionRecord>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!("SELECT {COLUMNS} FROM tlauth_connections ORDER BY id"),
                    &[],
                )
                .await
                .map_err(backend)?;
            rows.iter()
                .map(|row| decrypt_row(row, &self.inner.keys))
                .collect()
        })
    }

    /// Writes `record` fenced on its version; times are stored to the microsecond.
    fn update(&self, record: &ConnectionRecord) -> StoreFuture<'_, u64> {
        let record = record.clone();
        Box::pin(async move {
            let (access, refresh) = encrypt_tokens(&self.inner.keys, &record)?;
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "UPDATE tlauth_connections SET client_id = $1, scopes = $2, \
                     provider_id = $3, credentials_id = $4, access_token_enc = $5, \
                     access_expires_at = $6, refresh_token_enc = $7, consented_at = $8, \
                     updated_at = $9, status = $10, version = version + 1 \
                     WHERE id = $11 AND version = $12",
                )
                .await
                .map_err(backend)?;
            let changed = client
                .execute(
                    &statement,
                    &[
                        &record.client_id,
                        &record.scopes,
                        &record.provider_id,
                        &record.credentials_id,
                        &access,
                        &record.access_expires_at,
                        &refresh,
                        &record.consented_at,
                        &record.updated_at,
                        &record.status.as_str(),
                        &record.id.as_str(),
                        &version_to_sql(record.version),
                    ],
                )
                .await
                .map_err(backend)?;
            if changed == 1 {
                return Ok(record.version + 1);
            }
            let found: Option<i64> = client
                .query_opt(
                    "SELECT version FROM tlauth_connections WHERE id = $1",
                    &[&record.id.as_str()],
                )
                .await
                .map_err(backend)?
                .map(|r| r.get(0));
            match found {
                Some(found) => Err(StoreError::VersionConflict {
                    expected: record.version,
                    found: u64::try_from(found).unwrap_or(0),
                }),
                None => Err(StoreError::NotFound(record.id.clone())),
            }
        })
    }

    fn lock(&self, id: &ConnectionId, wait: Duration) -> StoreFuture<'_, Box<dyn ConnectionLock>> {
        let id = id.clone();
        Box::pin(async move {
            let lock = PgLock::acquire(&self.inner, id, wait).await?;
            Ok(Box::new(lock) as Box<dyn ConnectionLock>)
        })
    }

    fn lease(&self) -> Duration {
        self.inner.lease
    }
}

/// The advisory lock key of connection `id`: the first 8 bytes of a SHA-256 of it, the same
/// in every process and every version of this library (ids that collide only share a lock).
fn lock_key(id: &ConnectionId) -> i64 {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("truelayer-auth-connections/lock/{id}").as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(first)
}

/// A pooled database connection that may be inside a lock's transaction: handed back to the
/// pool only by [`finish`](Held::finish) once the transaction has ended; dropped otherwise,
/// it is taken out of the pool and closed, and the server ends the transaction.
struct Held(Option<Object>);

impl Held {
    fn client(&self) -> &Object {
        self.0.as_ref().expect("held until finished")
    }

    /// Ends the transaction (the lock with it) and hands the connection back.
    async fn finish(mut self) -> Result<(), StoreError> {
        self.client()
            .batch_execute("ROLLBACK")
            .await
            .map_err(backend)?;
        // Only now, outside any transaction, is it fit for the pool again.
        drop(self.0.take());
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(|o| o.is_closed())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            // Out of the pool, and closed when dropped: its session, transaction and lock end.
            drop(Object::take(object));
        }
    }
}

/// A held [`PostgresStore`] lock: an advisory lock in an open transaction, on a database
/// connection a task keeps alive (a ping every third of the lease) until release.
struct PgLock {
    id: ConnectionId,
    release: Option<oneshot::Sender<oneshot::Sender<Result<(), StoreError>>>>,
    /// Asks the keeping task for a ping now: `confirm`.
    confirm: tokio::sync::mpsc::Sender<oneshot::Sender<bool>>,
    state: Arc<LockState>,
}

struct LockState {
    /// The connection failed, or a ping did.
    lost: AtomicBool,
    /// When the server last heard from the lock's session, in ms after `since`.
    heard_ms: AtomicU64,
    since: Instant,
    lease: Duration,
}

impl LockState {
    /// Now, as the time a ping is sent: a safe lower bound for when the server last heard
    /// from the session once the ping is answered.
    fn now(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn heard(&self, sent_ms: u64) {
        self.heard_ms.fetch_max(sent_ms, Ordering::SeqCst);
    }

    /// Lost when a ping failed, or when half the lease has passed since the last ping that
    /// was answered was sent: the server's own bounds (its idle timeout at the lease, its
    /// keepalives) cannot have ended the session before that.
    fn is_lost(&self) -> bool {
        let heard = Duration::from_millis(self.heard_ms.load(Ordering::SeqCst));
        self.lost.load(Ordering::SeqCst) || self.since.elapsed() >= heard + self.lease / 2
    }
}

impl fmt::Debug for PgLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLock")
            .field("id", &self.id)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl PgLock {
    async fn acquire(
        inner: &Inner,
        id: ConnectionId,
        wait: Duration,
    ) -> Result<PgLock, StoreError> {
        let started = Instant::now();
        let timeout = |waited| StoreError::LockTimeout {
            id: id.clone(),
            waited,
        };
        let object = inner
            .locks
            .timeout_get(&Timeouts {
                wait: Some(wait.max(Duration::from_millis(1))),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            })
            .await
            .map_err(|e| match e {
                PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                    timeout(started.elapsed())
                }
                e => pool_error(e),
            })?;
        let held = Held(Some(object));
        let remaining = wait.saturating_sub(started.elapsed());
        let key = lock_key(&id);
        // One round trip: the transaction, its bounds, and the lock. `lock_timeout = 0`
        // would mean "no limit", so no wait is a try.
        let take = if remaining.is_zero() {
            format!("SELECT pg_try_advisory_xact_lock({key})")
        } else {
            format!(
                "SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'; \
                 SELECT pg_advisory_xact_lock({key}) IS NOT NULL",
                millis(remaining),
                millis(remaining + Duration::from_secs(5)),
            )
        };
        let sql = format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{}ms'; {take}",
            millis(inner.lease)
        );
        match held.client().simple_query(&sql).await {
            Ok(messages) => {
                let got = messages.iter().any(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
                    _ => false,
                });
                if !got {
                    held.finish().await?;
                    return Err(timeout(started.elapsed()));
                }
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::LOCK_NOT_AVAILABLE | &SqlState::QUERY_CANCELED)
                ) =>
            {
                held.finish().await?;
                return Err(timeout(started.elapsed()));
            }
            Err(e) => return Err(backend(e)),
        }
        // `since` is stamped before the lock's statement was answered would be better still;
        // it is stamped at once after, and `is_lost` keeps half the lease in hand.
        let state = Arc::new(LockState {
            lost: AtomicBool::new(false),
            heard_ms: AtomicU64::new(0),
            since: Instant::now(),
            lease: inner.lease,
        });
        let (release, released) = oneshot::channel();
        let (confirm, confirms) = tokio::sync::mpsc::channel(4);
        tokio::spawn(keep(held, released, confirms, Arc::clone(&state)));
        Ok(PgLock {
            id,
            release: Some(release),
            confirm,
            state,
        })
    }
}

/// One ping of the lock's session: answered within `limit`, on a connection still open. The
/// time it was sent counts as heard.
async fn ping(held: &Held, state: &LockState, limit: Duration) -> bool {
    let sent = state.now();
    let answered = tokio::time::timeout(limit, held.client().simple_query("SELECT 1")).await;
    let ok = matches!(answered, Ok(Ok(_))) && !held.is_closed();
    if ok {
        state.heard(sent);
    }
    ok
}

/// Keeps the lock's session alive until release (or the guard's drop), then ends it.
async fn keep(
    held: Held,
    mut released: oneshot::Receiver<oneshot::Sender<Result<(), StoreError>>>,
    mut confirms: tokio::sync::mpsc::Receiver<oneshot::Sender<bool>>,
    state: Arc<LockState>,
) {
    let every = state.lease / 3;
    loop {
        tokio::select! {
            reply = &mut released => {
                let result = held.finish().await;
                if let Err(error) = &result {
                    tracing::debug!(
                        error = error as &dyn std::error::Error,
                        "a connection lock's transaction did not end cleanly; its database connection was closed"
                    );
                }
                if let Ok(reply) = reply {
                    let _ = reply.send(result);
                }
                return;
            }
            Some(reply) = confirms.recv() => {
                let ok = !held.is_closed() && ping(&held, &state, every).await && !held.is_closed();
                let _ = reply.send(ok && !state.is_lost());
                if !ok {
                    tracing::warn!("a connection lock's database connection failed; the lock is lost");
                    state.lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
            () = tokio::time::sleep(every) => {
                if !held.is_closed() && ping(&held, &state, every).await && !held.is_closed() {
                    // Heard: stamped by the ping.
                } else {
                    tracing::warn!("a connection lock's database connection failed; the lock is lost");
                    state.lost.store(true, Ordering::SeqCst);
                    // Dropping it closes the connection: the server ends the lock.
                    return;
                }
            }
        }
    }
}

impl ConnectionLock for PgLock {
    fn release(mut self: Box<Self>) -> StoreFuture<'static, ()> {
        let release = self.release.take();
        Box::pin(async move {
            let Some(release) = release else {
                return Ok(());
            };
            let (reply, answer) = oneshot::channel();
            if release.send(reply).is_err() {
                // The task ended: the connection failed and was closed, so was the lock.
                return Ok(());
            }
            answer.await.unwrap_or(Ok(()))
        })
    }

    fn is_lost(&self) -> bool {
        self.state.is_lost()
    }

    fn confirm(&self) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            if self.state.is_lost() {
                return Ok(false);
            }
            let (reply, answer) = oneshot::channel();
            if self.confirm.send(reply).await.is_err() {
                return Ok(false);
            }
            Ok(answer.await.unwrap_or(false))
        })
    }
}
